package frontend

import (
	"cmp"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/wire"
	"golang.org/x/text/unicode/norm"
)

// Download names: the upload's own name without its extension, then the operation chain, then the
// extension of the image's type, as the page names its download links (leaf.jpg with
// resize:800x600,sharpen:1.5 gives leaf-resize-800x600_sharpen-1.5.png). A task without a name is named
// after its public id.

// maxStem and maxSlug bound the two parts of a download name, in bytes, so that the name stays well
// under the 255 bytes file systems allow.
const (
	maxStem = 120
	maxSlug = 80
)

// DownloadName is the file name of the result, of type contentType, of the task with status st and
// public id public: <stem>-<chain>.<ext>, where stem is the upload's name without its extension (or
// imgmill-<the public id's first 12 characters>), chain is st.Op made fit for a file name and ext
// follows contentType (.png when unknown). It never holds a path separator, a quote or a control
// character; it may hold other characters of any script (see ContentDisposition). The zip of results
// names its entries with it too.
func DownloadName(st wire.Status, public, contentType string) string {
	return stem(st.Name, public) + "-" + opSlug(st.Op) + cmp.Or(imageop.Extension(contentType), ".png")
}

// SourceName is the file name of the upload, of type contentType, of the task with status st and
// public id public: the upload's own name (cleaned as DownloadName's stem), or
// imgmill-<id12>-source; its extension follows contentType, and is dropped when that is not an image
// (never offer a page or a script by its name).
func SourceName(st wire.Status, public, contentType string) string {
	ext := ""
	if strings.HasPrefix(contentType, "image/") {
		ext = imageop.Extension(contentType)
	}
	if st.Name == "" || fileSafe(strings.TrimSuffix(st.Name, path.Ext(st.Name))) == "" {
		return stem("", public) + "-source" + ext
	}
	return stem(st.Name, public) + ext
}

// stem is name without its extension, made fit for a file name, or imgmill-<id12> when nothing is left.
func stem(name, public string) string {
	s := fileSafe(strings.TrimSuffix(name, path.Ext(name)))
	if s == "" {
		return "imgmill-" + public[:min(len(public), 12)]
	}
	return truncate(s, maxStem)
}

// opSlug is an operation chain made fit for a file name, as the page's fileSlug does: blanks dropped,
// the operations joined by "_" and their parameters by "-", anything but letters, digits and ._+-
// dropped; "swap" for the default.
func opSlug(op string) string {
	op = strings.Map(func(r rune) rune {
		switch {
		case unicode.IsSpace(r):
			return -1
		case r == ',' || r == '|':
			return '_'
		case r == ':':
			return '-'
		case r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._+-", r)):
			return r
		}
		return -1
	}, op)
	return cmp.Or(truncate(op, maxSlug), "swap")
}

// fileSafe replaces what a file name must not hold, on any common system, with "_" (path separators,
// quotes, control characters, Windows' reserved <>:|?*) and trims blanks and dots from both ends, so
// that the name is neither hidden nor empty-looking. Invalid UTF-8 is dropped.
func fileSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == utf8.RuneError:
			return -1
		case unicode.IsControl(r) || strings.ContainsRune(`/\"'<>:|?*`, r):
			return '_'
		}
		return r
	}, strings.ToValidUTF8(s, ""))
	return strings.Trim(s, " .\u00a0")
}

// truncate cuts s to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// ContentDisposition is the Content-Disposition header offering name (from DownloadName or
// SourceName) with disposition ("attachment" or "inline"): filename="..." in plain ASCII for every
// client (characters outside it become "_"), and, when name is not plain ASCII, RFC 6266's
// filename*=UTF-8”<percent-encoded> with the name itself, which clients that know it prefer.
func ContentDisposition(disposition, name string) string {
	// The plain name for old clients: letters with accents lose them (ç becomes c), anything else
	// outside printable ASCII becomes _.
	ascii := strings.Map(func(r rune) rune {
		switch {
		case unicode.Is(unicode.Mn, r):
			return -1
		case r < 0x20 || r > 0x7e || r == '"' || r == '\\':
			return '_'
		}
		return r
	}, norm.NFD.String(name))
	h := fmt.Sprintf("%s; filename=\"%s\"", disposition, ascii)
	if ascii != name {
		h += "; filename*=UTF-8''" + percentEncode(name)
	}
	return h
}

// percentEncode encodes s as RFC 5987's value-chars: attr-chars as they are, every other byte as %XX.
func percentEncode(s string) string {
	const attrChar = "!#$&+-.^_`|~"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(attrChar, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
