package deploytest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// SubmitViaFrontend uploads data through the frontend's /submitTask and returns the public id answered,
// an opaque string.
func SubmitViaFrontend(ctx context.Context, hc *http.Client, addr string, data []byte) (string, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("uploadfile", "image.png")
	if err != nil {
		return "", err
	}
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/submitTask", &body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("submitTask: %d %s", resp.StatusCode, reply)
	}
	if !publicid.WellFormed(string(reply)) {
		return "", fmt.Errorf("submitTask answered %q, not a public id", reply)
	}
	return string(reply), nil
}

// FrontendReady asks the frontend whether the task with public id pub is ready.
func FrontendReady(ctx context.Context, hc *http.Client, addr, pub string) (bool, error) {
	r, err := servicetest.Send(ctx, hc, http.MethodGet, "http://"+addr+"/isReady?id="+url.QueryEscape(pub), nil)
	if err != nil {
		return false, err
	}
	if r.Status != http.StatusOK {
		return false, fmt.Errorf("frontend /isReady: %d %s", r.Status, r.Body)
	}
	return r.Body == "Your image is ready.", nil
}

// FrontendStatus returns the frontend's /status of the task with public id pub.
func FrontendStatus(ctx context.Context, hc *http.Client, addr, pub string) (wire.PublicStatus, error) {
	r, err := servicetest.Send(ctx, hc, http.MethodGet, "http://"+addr+"/status?id="+url.QueryEscape(pub), nil)
	if err != nil {
		return wire.PublicStatus{}, err
	}
	if r.Status != http.StatusOK {
		return wire.PublicStatus{}, fmt.Errorf("frontend /status: %d %s", r.Status, r.Body)
	}
	var st wire.PublicStatus
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
		return wire.PublicStatus{}, fmt.Errorf("frontend /status %q: %w", r.Body, err)
	}
	return st, nil
}

// GetText GETs url and returns the body, whatever the status.
func GetText(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// FetchPNG is GetPNG, failing the test on an error.
func FetchPNG(t testing.TB, ctx context.Context, hc *http.Client, url string) image.Image {
	t.Helper()
	img, err := GetPNG(ctx, hc, url)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// GetPNG downloads and decodes the PNG image at url (safe from any goroutine).
func GetPNG(ctx context.Context, hc *http.Client, url string) (image.Image, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %d %s %q", url, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	img, err := png.Decode(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", url, err)
	}
	return img, nil
}

// FetchFromMaster downloads and decodes the result of task id from the master.
func FetchFromMaster(t testing.TB, ctx context.Context, m *client.Master, id int64) image.Image {
	t.Helper()
	img, err := m.Get(ctx, id)
	if err != nil {
		t.Fatalf("master /get %d: %v", id, err)
	}
	defer img.Close()
	result, err := png.Decode(img)
	if err != nil {
		t.Fatalf("decode master /get %d: %v", id, err)
	}
	return result
}

// WaitHealthy waits until the service at addr answers /healthz with 200.
func WaitHealthy(t testing.TB, ctx context.Context, hc *http.Client, addr string) {
	t.Helper()
	WaitFor(t, ctx, addr+" healthy", func() bool { return client.CheckHealth(ctx, hc, addr) == nil })
}

// WaitFor polls cond until it holds or ctx ends.
func WaitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	if !servicetest.Poll(ctx, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// GetStatus GETs url and returns the status.
func GetStatus(ctx context.Context, hc *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// IsDone reports whether ch is closed.
func IsDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ListTasks returns every task the database holds.
func ListTasks(ctx context.Context, db *client.Database) ([]wire.Task, error) {
	list, err := db.List(ctx)
	if err != nil {
		return nil, err
	}
	var tasks []wire.Task
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		var task wire.Task
		if err := json.Unmarshal(sc.Bytes(), &task); err != nil {
			return nil, fmt.Errorf("list line %q: %w", sc.Text(), err)
		}
		tasks = append(tasks, task)
	}
	return tasks, sc.Err()
}
