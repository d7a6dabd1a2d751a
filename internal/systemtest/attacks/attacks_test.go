package attacks

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// token is the internal services' shared secret in these tests: 44 characters, as `openssl rand
// -base64 32` makes them.
const token = "attack-table-token-0123456789abcdefghijklmno"

// The services of `imgmill serve`, in the order deploytest.ServeApp answers their addresses.
const (
	frontend = iota
	kv
	database
	storage
	master
)

var serviceNames = []string{frontend: "frontend", kv: "kv", database: "database", storage: "storage", master: "master"}

// attack is one bad request and what it must get: a 4xx whose body starts with "Error:" (or, from the
// frontend's JSON API, {"error":"..."}) and says something specific.
type attack struct {
	name    string
	service int
	// authorized sends the internal token: the internal services refuse anything without it, so an
	// attack on what they do with bad input has to carry it.
	authorized bool
	method     string
	target     string // path and query
	header     map[string]string
	body       []byte
	// raw, when set, is sent as it is over a new connection instead (method, target, header and body
	// unused); with cut the connection is half-closed after it, a client that goes away mid-request.
	raw string
	cut bool
	// repeat sends the request that many times (at least once); the last answer is judged.
	repeat int
	// want is the status the attack must get; says, a piece of the answer's body.
	want int
	says string
}

func TestAttacks(t *testing.T) {
	addrs := deploytest.ServeApp(t, nil, "--token", token, "--concurrency", "2", "--upload-rate", "0")
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	app := &app{t: t, hc: hc, addrs: addrs}

	small := servicetest.PatternPNG(t, 32, 1)
	attacks := attackTable(small)
	if len(attacks) < 60 {
		t.Fatalf("the table has %d attacks, want at least 60", len(attacks))
	}
	for i, a := range attacks {
		status, body, err := app.send(a)
		for range a.repeat - 1 {
			status, body, err = app.send(a)
		}
		switch {
		case err != nil:
			t.Errorf("%s: %v", a.name, err)
		case status != a.want:
			t.Errorf("%s: %d %q, want %d", a.name, status, trim(body), a.want)
		case !isErrorBody(body):
			t.Errorf("%s: %d %q, want a body starting with Error: (or a JSON error)", a.name, status, trim(body))
		case !strings.Contains(body, a.says):
			t.Errorf("%s: %d %q, want it to say %q", a.name, status, trim(body), a.says)
		}
		app.checkUnharmed(i)
	}
	t.Logf("%d attacks, each followed by a health check of the 5 services, a normal upload and a re-read of the earlier results (%d at the end)",
		len(attacks), len(app.results))
}

// isErrorBody reports whether an answer's body is an error as imgmill writes them.
func isErrorBody(body string) bool {
	return strings.HasPrefix(body, "Error:") || strings.HasPrefix(body, `{"error":`)
}

func trim(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// app is the `imgmill serve` under attack, and the results of the normal uploads made between attacks.
type app struct {
	t       *testing.T
	hc      *http.Client
	addrs   []string
	results []result
}

type result struct {
	id    int64
	bytes []byte
}

// send makes an attack's request and returns the answer's status and body.
func (a *app) send(at attack) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := a.addrs[at.service]
	if at.raw != "" {
		return sendRaw(ctx, addr, at.raw, at.cut)
	}
	req, err := http.NewRequestWithContext(ctx, cmpOr(at.method, http.MethodGet), "http://"+addr+at.target, bytes.NewReader(at.body))
	if err != nil {
		return 0, "", err
	}
	if at.body == nil {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	for k, v := range at.header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if at.authorized {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	r, err := servicetest.Do(a.hc, req)
	return r.Status, r.Body, err
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sendRaw writes raw to a new connection to addr, half-closes it when cut, and reads the answer.
func sendRaw(ctx context.Context, addr, raw string, cut bool) (int, string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, raw); err != nil {
		return 0, "", fmt.Errorf("writing the request: %w", err)
	}
	if cut {
		conn.(*net.TCPConn).CloseWrite()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", fmt.Errorf("reading the answer: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// checkUnharmed checks, after attack i, that every service is healthy, that a normal upload is
// processed right, and that every earlier result is still there, byte for byte.
func (a *app) checkUnharmed(i int) {
	t := a.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for s, addr := range a.addrs {
		r, err := a.call(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
		if err != nil || r.Status != http.StatusOK {
			t.Fatalf("after attack %d: %s /healthz = %d %q (%v)", i, serviceNames[s], r.Status, r.Body, err)
		}
	}
	master := "http://" + a.addrs[master]
	orig := testimage.Pattern(24, int64(i))
	data, err := testimage.EncodePNG(orig)
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.call(ctx, http.MethodPost, master+"/new", data)
	if err != nil || r.Status != http.StatusOK {
		t.Fatalf("after attack %d: a normal upload = %d %q (%v)", i, r.Status, r.Body, err)
	}
	id, err := strconv.ParseInt(r.Body, 10, 64)
	if err != nil {
		t.Fatalf("after attack %d: upload answered %q", i, r.Body)
	}
	for {
		r, err := a.call(ctx, http.MethodGet, master+"/isReady?wait=10s&id="+r.Body, nil)
		if err != nil {
			t.Fatalf("after attack %d: isReady: %v", i, err)
		}
		if r.Body == "1" {
			break
		}
	}
	got, err := a.call(ctx, http.MethodGet, master+"/get?id="+strconv.FormatInt(id, 10), nil)
	if err != nil || got.Status != http.StatusOK {
		t.Fatalf("after attack %d: the result = %d (%v)", i, got.Status, err)
	}
	img, err := decodePNG(got.Body)
	if err != nil {
		t.Fatalf("after attack %d: the result: %v", i, err)
	}
	if err := testimage.CheckSwapped(orig, img); err != nil {
		t.Fatalf("after attack %d: the result: %v", i, err)
	}
	for _, earlier := range a.results {
		r, err := a.call(ctx, http.MethodGet, master+"/get?id="+strconv.FormatInt(earlier.id, 10), nil)
		if err != nil || r.Status != http.StatusOK || r.Body != string(earlier.bytes) {
			t.Fatalf("after attack %d: task %d's result changed or is gone: %d, %d bytes (%v)", i, earlier.id, r.Status, len(r.Body), err)
		}
	}
	a.results = append(a.results, result{id: id, bytes: []byte(got.Body)})
}

// call makes an authorized request.
func (a *app) call(ctx context.Context, method, url string, body []byte) (servicetest.Reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return servicetest.Reply{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	return servicetest.Do(a.hc, req)
}

// multipartBody is a form with one file field holding data, its Content-Type, and, with open, the
// closing boundary left out (a form cut short).
func multipartBody(field string, data []byte, open bool) ([]byte, string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	fw, err := mw.CreateFormFile(field, "image.png")
	if err != nil {
		panic(err) // writing to memory
	}
	fw.Write(data)
	if !open {
		mw.Close()
	}
	return b.Bytes(), mw.FormDataContentType()
}

// rawPost is an HTTP/1.1 POST of target declaring length bytes and carrying body (which may be
// shorter: the rest never comes).
func rawPost(target, contentType string, length int, body []byte) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s", target, contentType, length, body)
}

func q(s string) string { return url.QueryEscape(s) }
