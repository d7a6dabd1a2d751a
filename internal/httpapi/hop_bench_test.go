package httpapi_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// BenchmarkHopBareHTTP is the floor under every hop benchmark: one keep-alive exchange on loopback
// that posts 10 KiB (a 64 px PNG's size) and reads a 7-byte answer, with a handler that does nothing
// else. "stdlib" is net/http's client and server as they come; "httpapi" is the services' own client
// and server (the shared middleware: request id, a logger per request, the access log, panic recovery and
// timeouts; the log is discarded).
// Client and server run in this process, so cpu-ns/op and allocs/op count both ends.
func BenchmarkHopBareHTTP(b *testing.B) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			httpapi.WriteText(w, http.StatusBadRequest, "Error: "+err.Error())
			return
		}
		httpapi.WriteText(w, http.StatusOK, "success")
	})
	body := bytes.Repeat([]byte("imgmill!"), 10<<10/8)
	for _, tc := range []struct {
		name string
		url  func(b *testing.B) string
		hc   func(testing.TB) *http.Client
	}{
		{"stdlib", func(b *testing.B) string {
			srv := httptest.NewServer(handler)
			b.Cleanup(srv.Close)
			return srv.URL
		}, func(b testing.TB) *http.Client {
			hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
			b.Cleanup(hc.CloseIdleConnections)
			return hc
		}},
		{"httpapi", func(b *testing.B) string { return servicetest.Serve(b, handler).URL }, servicetest.NewHTTPClient},
	} {
		b.Run(tc.name, func(b *testing.B) {
			url, hc := tc.url(b), tc.hc(b)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			cpu := servicetest.StartCPU()
			for b.Loop() {
				r, err := servicetest.Send(context.Background(), hc, http.MethodPost, url+"/hop", bytes.NewReader(body))
				if err != nil || r.Status != http.StatusOK || r.Body != "success" {
					b.Fatalf("POST /hop: %d %q (%v), want 200 success", r.Status, r.Body, err)
				}
			}
			cpu.Report(b)
		})
	}
}
