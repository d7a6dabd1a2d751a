package attacks

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"net/http"
	"strings"

	"github.com/imgmill/imgmill/internal/testimage"
)

func decodePNG(s string) (image.Image, error) { return png.Decode(strings.NewReader(s)) }

// attackTable is every attack TestAttacks makes; small is a small, valid PNG.
func attackTable(small []byte) []attack {
	const (
		post = http.MethodPost
		get  = http.MethodGet
	)
	blurs := strings.Repeat(",blur:6", 15)
	bigPNG := testimage.PNGHeader(20000, 100)        // over 16384 a side
	manyPixels := testimage.PNGHeader(10000, 10000)  // 100 MP, over 50 MP
	deep := testimage.PNGHeaderDepth(7071, 7071, 16) // 50 MP at 16 bits a channel
	jpegMeta := testimage.InsertJPEGMetadata(jpegOf(), 300<<10)
	tiffFar := []byte("II*\x00\x00\x00\x00\x80") // its directory 2 GiB in
	gifHuge := []byte("GIF89a\xff\xff\xff\xff\x00\x00\x00")
	bmpHuge := bmpHeader(100000, 100000)
	webpHuge := webpHeader(16383, 16383)
	longOp := strings.Repeat("swap,", 500)
	ops17 := strings.TrimSuffix(strings.Repeat("invert,", 17), ",")
	form, formType := multipartBody("uploadfile", small, false)
	noFile, noFileType := multipartBody("other", small, false)
	openForm, openFormType := multipartBody("uploadfile", small, true)
	half := small[:len(small)/2]
	_ = form

	return []attack{
		// The frontend's JSON API.
		{name: "api: empty body", service: frontend, method: post, target: "/api/tasks", want: 400, says: "empty"},
		{name: "api: not an image", service: frontend, method: post, target: "/api/tasks", body: []byte("hello, world"), want: 415, says: "not an image imgmill reads"},
		{name: "api: unknown operation", service: frontend, method: post, target: "/api/tasks?op=explode", body: small, want: 400, says: "explode"},
		{name: "api: resize too large a side", service: frontend, method: post, target: "/api/tasks?op=resize:99999x1", body: small, want: 400, says: "resize"},
		{name: "api: 17 operations", service: frontend, method: post, target: "/api/tasks?op=" + ops17, body: small, want: 400, says: "16"},
		{name: "api: 2,500-byte op", service: frontend, method: post, target: "/api/tasks?op=" + q(longOp), body: small, want: 400, says: "op"},
		{name: "api: 20000 px wide header", service: frontend, method: post, target: "/api/tasks", body: bigPNG, want: 413, says: "20000x100"},
		{name: "api: 100 MP header", service: frontend, method: post, target: "/api/tasks", body: manyPixels, want: 413, says: "10000x10000"},
		{name: "api: resize a small image to 268 MP", service: frontend, method: post, target: "/api/tasks?op=resize:16384x16384:exact", body: small, want: 413, says: "16384x16384"},
		{name: "api: resize to 50 MP then 15 blurs (CPU)", service: frontend, method: post, target: "/api/tasks?op=" + q("resize:7071x7071:exact"+blurs), body: small, want: 413, says: "blur:6"},
		{name: "api: 16-bit 50 MP rotate, blur, sharpen twice (memory)", service: frontend, method: post,
			target: "/api/tasks?op=" + q("rotate:90,blur:6,sharpen:10,rotate:90,blur:6,sharpen:10"), body: deep, want: 413, says: "memory"},
		{name: "api: a newline in the op", service: frontend, method: post, target: "/api/tasks?op=swap%0Aswap", body: small, want: 400, says: "op"},
		{name: "api: declares 300 MB", service: frontend, raw: rawPost("/api/tasks", "image/png", 300<<20, small), cut: true, want: 413, says: "the largest upload is"},
		{name: "api: body cut off", service: frontend, raw: rawPost("/api/tasks", "image/png", len(small)+8192, small), cut: true, want: 400, says: "broke off"},
		{name: "api: chunked body cut off", service: frontend, raw: "POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n", len(half), half), cut: true, want: 400, says: "broke off"},
		{name: "api: page of another site", service: frontend, method: post, target: "/api/tasks", body: small, header: map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, want: 403, says: "not accepted"},
		{name: "api: bad idempotency key", service: frontend, method: post, target: "/api/tasks", body: small, header: map[string]string{"Idempotency-Key": "a\tb"}, want: 400, says: "Idempotency-Key"},
		{name: "api: 1,000-byte idempotency key", service: frontend, method: post, target: "/api/tasks", body: small, header: map[string]string{"Idempotency-Key": strings.Repeat("k", 1000)}, want: 400, says: "Idempotency-Key"},
		{name: "api: JPEG header after 300 KB of metadata", service: frontend, method: post, target: "/api/tasks", body: jpegMeta, want: 415, says: "no image size within its first"},
		{name: "api: TIFF directory 2 GiB in", service: frontend, method: post, target: "/api/tasks", body: tiffFar, want: 415, says: "cannot read this TIFF: its image directory starts at byte"},
		{name: "api: GIF of 65535x65535", service: frontend, method: post, target: "/api/tasks", body: gifHuge, want: 413, says: "65535x65535"},
		{name: "api: BMP of 100000x100000", service: frontend, method: post, target: "/api/tasks", body: bmpHuge, want: 413, says: "100000x100000"},
		{name: "api: WebP of 16383x16383", service: frontend, method: post, target: "/api/tasks", body: webpHuge, want: 413, says: "16383x16383"},
		{name: "api: progressive JPEG of 1,000 scans", service: frontend, method: post, target: "/api/tasks", body: scanBomb(), want: 422, says: "scans"},
		{name: "api: unknown task", service: frontend, target: "/api/tasks/AAAAAAAAAAAA", want: 404, says: "no such task"},
		{name: "api: malformed task id", service: frontend, target: "/api/tasks/%2e%2e%2fetc", want: 404, says: "task"},
		{name: "api: events of an unknown task", service: frontend, target: "/api/tasks/AAAAAAAAAAAA/events", want: 404, says: "no such task"},
		{name: "api: result of an unknown task", service: frontend, target: "/api/tasks/AAAAAAAAAAAA/result", want: 404, says: "no such task"},
		{name: "api: no such endpoint", service: frontend, target: "/api/admin", want: 404, says: "no endpoint"},
		{name: "api: DELETE the collection", service: frontend, method: http.MethodDelete, target: "/api/tasks", want: 405, says: "method"},

		// The frontend's form and reference endpoints.
		{name: "form: no file field", service: frontend, method: post, target: "/submitTask", body: noFile, header: map[string]string{"Content-Type": noFileType}, want: 400, says: "uploadfile"},
		{name: "form: not multipart", service: frontend, method: post, target: "/submitTask", body: small, header: map[string]string{"Content-Type": "image/png"}, want: 400, says: "multipart"},
		{name: "form: closing boundary missing", service: frontend, method: post, target: "/submitTask", body: openForm, header: map[string]string{"Content-Type": openFormType}, want: 400, says: "broke off"},
		{name: "form: cut off mid-file", service: frontend, raw: rawPost("/submitTask", openFormType, len(openForm)+65536, openForm), cut: true, want: 400, says: "broke off"},
		{name: "form: from another site", service: frontend, method: post, target: "/submitTask", body: form, header: map[string]string{"Content-Type": formType, "Sec-Fetch-Site": "cross-site"}, want: 403, says: "not accepted"},
		{name: "form: isReady without id", service: frontend, target: "/isReady", want: 400, says: "id"},
		{name: "form: getImage of a made-up id", service: frontend, target: "/getImage?id=zzzzzzzzzzzz", want: 404, says: "task"},
		{name: "form: status with a NUL in the id", service: frontend, target: "/status?id=%00", want: 404, says: "task"},
		{name: "form: asset outside the assets", service: frontend, target: "/assets/..%2f..%2fgo.mod", want: 404, says: "no such file"},
		{name: "form: 100 KB of headers", service: frontend, target: "/", header: map[string]string{"X-Filler": strings.Repeat("a", 100<<10)}, want: 431, says: "header"},

		// The master, as a client with the token would call it.
		{name: "master: empty upload", service: master, authorized: true, method: post, target: "/new", want: 400, says: "empty"},
		{name: "master: not an image", service: master, authorized: true, method: post, target: "/new", body: []byte("GIF87"), want: 415, says: "GIF"},
		{name: "master: unknown operation", service: master, authorized: true, method: post, target: "/new?op=nope", body: small, want: 400, says: "nope"},
		{name: "master: CPU bomb", service: master, authorized: true, method: post, target: "/new?op=" + q("resize:7071x7071:exact"+blurs), body: small, want: 413, says: "CPU"},
		{name: "master: GET /new", service: master, authorized: true, target: "/new", want: 405, says: "method"},
		{name: "master: isReady of id abc", service: master, authorized: true, target: "/isReady?id=abc", want: 400, says: "id"},
		{name: "master: isReady of id -1", service: master, authorized: true, target: "/isReady?id=-1", want: 400, says: "id"},
		{name: "master: isReady of a 20-digit id", service: master, authorized: true, target: "/isReady?id=99999999999999999999", want: 400, says: "id"},
		{name: "master: isReady waiting an hour", service: master, authorized: true, target: "/isReady?id=1&wait=1h", want: 400, says: "wait"},
		{name: "master: get of an unknown task", service: master, authorized: true, target: "/get?id=987654321", want: 404, says: "987654321"},
		{name: "master: source of an unknown task", service: master, authorized: true, target: "/source?id=987654321", want: 404, says: "987654321"},
		{name: "master: finish with a bad token", service: master, authorized: true, method: post, target: "/registerTaskFinished?id=1&token=abc", want: 400, says: "token"},
		{name: "master: extend the lease of id x", service: master, authorized: true, method: post, target: "/extendLease?id=x", want: 400, says: "id"},
		{name: "master: upload without the token", service: master, method: post, target: "/new", body: small, want: 401, says: "token"},

		// The database.
		{name: "database: without the token", service: database, target: "/list", want: 401, says: "token"},
		{name: "database: wrong token", service: database, target: "/list", header: map[string]string{"Authorization": "Bearer wrong-token-wrong-token-wrong-token"}, want: 401, says: "token"},
		{name: "database: setById with a key twice", service: database, authorized: true, method: post, target: "/setById", body: []byte(`{"id":0,"state":2,"id":1}`), want: 400, says: "twice"},
		{name: "database: setById with an unknown field", service: database, authorized: true, method: post, target: "/setById", body: []byte(`{"id":1,"state":0,"colour":"red"}`), want: 400, says: "colour"},
		{name: "database: setById with trailing data", service: database, authorized: true, method: post, target: "/setById", body: []byte(`{"id":1}{"id":2}`), want: 400, says: "after"},
		{name: "database: setById of 2 MB", service: database, authorized: true, method: post, target: "/setById", body: []byte(`{"id":1,"error":"` + strings.Repeat("x", 2<<20) + `"}`), want: 413, says: "over 65536 bytes"},
		{name: "database: newTask with a newline in the op", service: database, authorized: true, method: post, target: "/newTask?op=swap%0Aswap", want: 400, says: "op"},
		{name: "database: newTask with -5 attempts", service: database, authorized: true, method: post, target: "/newTask?maxAttempts=-5", want: 400, says: "maxAttempts"},
		{name: "database: getById of id x", service: database, authorized: true, target: "/getById?id=x", want: 400, says: "id"},

		// Storage.
		{name: "storage: without the token", service: storage, target: "/getImage?id=1&state=working", want: 401, says: "token"},
		{name: "storage: state outside the two", service: storage, authorized: true, target: "/getImage?id=1&state=..%2f..%2fetc", want: 400, says: "state"},
		{name: "storage: id that is a path", service: storage, authorized: true, method: post, target: "/sendImage?id=..%2f1&state=working", body: small, want: 400, says: "id"},
		{name: "storage: token +7", service: storage, authorized: true, method: post, target: "/sendImage?id=1&state=finished&token=%2B7", body: small, want: 400, says: "token"},
		{name: "storage: image of an unknown task", service: storage, authorized: true, target: "/getImage?id=987654321&state=working", want: 404, says: "987654321"},

		// kv.
		{name: "kv: without the token", service: kv, target: "/get?key=master", want: 401, says: "token"},
		{name: "kv: a newline in a key", service: kv, authorized: true, method: post, target: "/set?key=a%0Amaster&value=x", want: 400, says: "control"},
		{name: "kv: a NUL in a value", service: kv, authorized: true, method: post, target: "/set?key=attack&value=a%00b", want: 400, says: "control"},
		{name: "kv: a ttl of 1000 hours", service: kv, authorized: true, method: post, target: "/set?key=attack&value=x&ttl=1000h", want: 400, says: "ttl"},
		{name: "kv: a ttl that is no duration", service: kv, authorized: true, method: post, target: "/set?key=attack&value=x&ttl=soon", want: 400, says: "ttl"},
		{name: "kv: 20 wrong tokens in a row", service: kv, target: "/get?key=master", header: map[string]string{"Authorization": "Bearer guess-guess-guess-guess-guess-guess-00"}, repeat: 20, want: 429, says: "too many failed attempts"},
		{name: "kv: GET /remove", service: kv, authorized: true, target: "/remove?key=master", want: 405, says: "method"},
	}
}

// jpegOf is a small JPEG.
func jpegOf() []byte {
	var b bytes.Buffer
	if err := jpeg.Encode(&b, testimage.Pattern(16, 3), nil); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// bmpHeader is the first 54 bytes of a 24-bit BMP of width×height pixels.
func bmpHeader(width, height int) []byte {
	b := []byte("BM")
	b = binary.LittleEndian.AppendUint32(b, 54)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, 54)
	b = binary.LittleEndian.AppendUint32(b, 40)
	b = binary.LittleEndian.AppendUint32(b, uint32(width))
	b = binary.LittleEndian.AppendUint32(b, uint32(height))
	b = binary.LittleEndian.AppendUint16(b, 1)
	b = binary.LittleEndian.AppendUint16(b, 24)
	return append(b, make([]byte, 24)...)
}

// webpHeader is the first bytes of a lossless WebP of width×height pixels (up to 16384 a side).
func webpHeader(width, height int) []byte {
	b := []byte("RIFF\x0c\x10\x00\x00WEBPVP8L\x00\x10\x00\x00\x2f")
	bits := uint32(width-1) | uint32(height-1)<<14
	return append(binary.LittleEndian.AppendUint32(b, bits), make([]byte, 16)...)
}

// scanBomb is a 75 KB progressive JPEG of 7000x7000 with 1,000 scans.
func scanBomb() []byte { return testimage.JPEGScanBomb(7000, 7000, 1000) }
