package frontend

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// assetFS holds the upload page's static files (page, style sheet, script, icon), served under /assets/.
//
//go:embed assets
var assetFS embed.FS

// asset is one static file, read once at startup, with a strong ETag made from its content.
type asset struct {
	data  []byte
	etag  string
	ctype string
}

// assets are the files under /assets/ by name. The page itself is not among them: it is served at / only,
// under its Content-Security-Policy.
var assets = func() map[string]asset {
	m := map[string]asset{}
	entries, err := fs.ReadDir(assetFS, "assets")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "index.html" {
			continue
		}
		data, err := assetFS.ReadFile("assets/" + e.Name())
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(data)
		ctype := mime.TypeByExtension(path.Ext(e.Name()))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		m[e.Name()] = asset{data: data, etag: `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`, ctype: ctype}
	}
	return m
}()

// handleAsset serves GET /assets/{name}. The URLs carry no content hash, so the files are not cached
// for long: "no-cache" makes the browser revalidate each time, which the ETag answers with 304 Not
// Modified while the file is unchanged, and a new release is seen at once.
func (s *server) handleAsset(w http.ResponseWriter, r *http.Request) error {
	a, ok := assets[r.PathValue("name")]
	if !ok {
		return httpapi.Errorf(http.StatusNotFound, "no such file")
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.data))
	return nil
}
