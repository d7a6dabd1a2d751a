package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"mime/multipart"
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
	"github.com/imgmill/imgmill/internal/wire"
)

const testToken = "imgmill-test-token-0123456789-abcdefgh"

// newTokenDeployment is a split deployment whose services all get token (through IMGMILL_TOKEN) and
// whose client d.HC sends it.
func newTokenDeployment(t testing.TB, token string) *deploytest.Deployment {
	t.Helper()
	d := deploytest.New(t)
	d.Token = token
	d.HC = httpapi.NewClient(httpapi.WithToken(token)) // the cleanup closes whichever d.HC is set
	return d
}

// The split deployment with a token: an image goes through the public frontend (no token needed there)
// end to end, while kv, database, storage and master answer 401 to a caller without the token (except
// /healthz) and work for one with it.
func TestSecuritySplitDeploymentWithToken(t *testing.T) {
	d := newTokenDeployment(t, testToken)
	d.StartBackends()
	d.StartWorker("worker")
	d.StartFrontend()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	public := servicetest.NewHTTPClient(t) // a browser: no token
	deploytest.WaitHealthy(t, ctx, public, d.FEAddr)

	orig := testimage.Pattern(48, 11)
	data, err := testimage.EncodePNG(orig)
	if err != nil {
		t.Fatal(err)
	}
	id, err := submitOpaque(ctx, public, d.FEAddr, data)
	if err != nil {
		t.Fatalf("upload through the frontend: %v", err)
	}
	q := "?id=" + url.QueryEscape(id)
	deploytest.WaitFor(t, ctx, "task "+id+" ready at the frontend", func() bool {
		body, _ := deploytest.GetText(ctx, public, "http://"+d.FEAddr+"/isReady"+q)
		return body == "Your image is ready."
	})
	if err := testimage.CheckSwapped(orig, deploytest.FetchPNG(t, ctx, public, "http://"+d.FEAddr+"/getImage"+q)); err != nil {
		t.Errorf("result from the frontend: %v", err)
	}

	// The internal services, found through kv with the token.
	addrs := map[string]string{"kv": d.KVAddr}
	for name, key := range map[string]string{"database": wire.DatabaseKey, "storage": wire.StorageKey, "master": wire.MasterKey} {
		r := servicetest.Call(t, d.HC, http.MethodGet, "http://"+d.KVAddr+"/get?key="+key, nil)
		if r.Status != 200 {
			t.Fatalf("kv /get?key=%s with the token = %d %q", key, r.Status, r.Body)
		}
		addrs[name] = r.Body
	}
	// The task's id inside the pipeline, from the database's list.
	r := servicetest.Call(t, d.HC, http.MethodGet, "http://"+addrs["database"]+"/list", nil)
	var task struct{ ID, State int64 }
	if err := json.Unmarshal([]byte(strings.SplitN(r.Body, "\n", 2)[0]), &task); r.Status != 200 || err != nil || task.State != 2 {
		t.Fatalf("database /list with the token = %d %q (%v), want the finished task", r.Status, r.Body, err)
	}
	n := strconv.FormatInt(task.ID, 10)

	calls := []struct {
		service, method, path string
		body                  []byte
		want                  func(servicetest.Reply) bool // the answer with the token
	}{
		{"kv", "GET", "/list", nil, func(r servicetest.Reply) bool { return strings.Contains(r.Body, wire.MasterKey+" : ") }},
		{"kv", "POST", "/set?key=evil&value=1.2.3.4:5", nil, func(r servicetest.Reply) bool { return r.Body == "success" }},
		{"kv", "DELETE", "/remove?key=evil", nil, func(r servicetest.Reply) bool { return r.Body == "success" }},
		{"database", "GET", "/getById?id=" + n, nil, func(r servicetest.Reply) bool { return strings.Contains(r.Body, `"state":2`) }},
		{"database", "GET", "/list", nil, func(r servicetest.Reply) bool { return strings.Contains(r.Body, `"id":`+n) }},
		{"database", "POST", "/getNewTask", nil, func(r servicetest.Reply) bool { return r.Status == 400 }}, // nothing to claim
		{"storage", "GET", "/getImage?id=" + n + "&state=finished", nil, func(r servicetest.Reply) bool {
			return r.Status == 200 && r.Header.Get("Content-Type") == "image/png"
		}},
		{"master", "GET", "/isReady?id=" + n, nil, func(r servicetest.Reply) bool { return r.Body == "1" }},
		{"master", "GET", "/get?id=" + n, nil, func(r servicetest.Reply) bool { return r.Status == 200 }},
		{"master", "POST", "/new", data, func(r servicetest.Reply) bool { _, err := strconv.ParseInt(r.Body, 10, 64); return err == nil }},
	}
	for _, c := range calls {
		u := "http://" + addrs[c.service] + c.path
		r := servicetest.Call(t, public, c.method, u, bytes.NewReader(c.body))
		if r.Status != http.StatusUnauthorized || r.Body != httpapi.UnauthorizedText || r.Header.Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("%s %s %s without the token = %d %q, want 401 %q", c.service, c.method, c.path, r.Status, r.Body, httpapi.UnauthorizedText)
		}
		req, _ := http.NewRequest(c.method, u, bytes.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer wrong-"+testToken)
		if r := servicetest.MustDo(t, public, req); r.Status != http.StatusUnauthorized {
			t.Errorf("%s %s %s with a wrong token = %d %q, want 401", c.service, c.method, c.path, r.Status, r.Body)
		}
		if r := servicetest.Call(t, d.HC, c.method, u, bytes.NewReader(c.body)); !c.want(r) {
			t.Errorf("%s %s %s with the token = %d %q", c.service, c.method, c.path, r.Status, deploytest.Tail(r.Body, 200))
		}
	}
	for name, addr := range addrs {
		if r := servicetest.Call(t, public, http.MethodGet, "http://"+addr+"/healthz", nil); r.Status != 200 || r.Body != "ok" {
			t.Errorf("%s /healthz without the token = %d %q, want 200 ok", name, r.Status, r.Body)
		}
	}
}

// submitOpaque uploads data through the frontend's /submitTask and returns the id as the opaque string
// it is.
func submitOpaque(ctx context.Context, hc *http.Client, addr string, data []byte) (string, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("uploadfile", "image.png")
	if err != nil {
		return "", err
	}
	if _, err := fw.Write(data); err != nil {
		return "", err
	}
	if err := mw.Close(); err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/submitTask", &body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	r, err := servicetest.Do(hc, req)
	if err != nil {
		return "", err
	}
	if r.Status != http.StatusOK || r.Body == "" {
		return "", fmt.Errorf("submitTask: %d %q", r.Status, r.Body)
	}
	return r.Body, nil
}
