package httpapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestServerTimeouts(t *testing.T) {
	srv := httpapi.NewHTTPServer(httpapi.Livez(), servicetest.Discard)
	if srv.ReadHeaderTimeout != httpapi.ReadHeaderTimeout || srv.ReadTimeout != httpapi.ReadTimeout ||
		srv.WriteTimeout != httpapi.WriteTimeout || srv.IdleTimeout != httpapi.IdleTimeout || srv.MaxHeaderBytes < httpapi.MaxHeaderBytes {
		t.Errorf("defaults: header %v read %v write %v idle %v max header %d", srv.ReadHeaderTimeout, srv.ReadTimeout,
			srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes)
	}
	// The production values: headers quickly, bodies and replies long enough for big images and long polls.
	if httpapi.ReadHeaderTimeout != 10*time.Second || httpapi.ReadTimeout != 10*time.Minute ||
		httpapi.WriteTimeout != 10*time.Minute || httpapi.IdleTimeout != 2*time.Minute {
		t.Errorf("default timeouts changed: %v %v %v %v", httpapi.ReadHeaderTimeout, httpapi.ReadTimeout, httpapi.WriteTimeout, httpapi.IdleTimeout)
	}
	srv = httpapi.NewHTTPServer(httpapi.Livez(), servicetest.Discard,
		httpapi.WithTimeouts(httpapi.ServerTimeouts{ReadHeader: time.Second, Write: 3 * time.Second}))
	if srv.ReadHeaderTimeout != time.Second || srv.ReadTimeout != httpapi.ReadTimeout ||
		srv.WriteTimeout != 3*time.Second || srv.IdleTimeout != httpapi.IdleTimeout {
		t.Errorf("overridden: header %v read %v write %v idle %v; want 1s, default, 3s, default",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
	}
}

// trickle is a raw TCP client: it sends head at once, then one byte of drip every interval, and reports
// how long after head the server closed the connection (whatever it answered before closing is in
// reply). It gives up after giveUp.
type trickle struct {
	head, drip       string
	interval, giveUp time.Duration
	started          chan struct{} // closed once head is sent
	finished         chan struct{} // closed when run returns; then took, reply and err are set

	took  time.Duration
	reply string
	err   error
}

func newTrickle(head, drip string, interval, giveUp time.Duration) *trickle {
	return &trickle{head: head, drip: drip, interval: interval, giveUp: giveUp,
		started: make(chan struct{}), finished: make(chan struct{})}
}

func (c *trickle) run(addr string) {
	defer close(c.finished)
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		c.err = err
		close(c.started)
		return
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, c.head); err != nil {
		c.err = fmt.Errorf("write head: %w", err)
		close(c.started)
		return
	}
	start := time.Now()
	close(c.started)
	var writer sync.WaitGroup
	stop := make(chan struct{})
	writer.Go(func() {
		for i := range len(c.drip) {
			select {
			case <-stop:
				return
			case <-time.After(c.interval):
			}
			if _, err := conn.Write([]byte{c.drip[i]}); err != nil {
				return // the server hung up
			}
		}
	})
	defer writer.Wait()
	defer close(stop)
	conn.SetReadDeadline(start.Add(c.giveUp))
	b, err := io.ReadAll(conn) // until the server closes the connection
	c.took, c.reply = time.Since(start), string(b)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.err = fmt.Errorf("still connected after %v (read %q)", c.giveUp, b)
	}
	// Any other read error (a reset) means the server closed the connection too.
}

// A slowloris client (headers one byte at a time) is cut off after ReadHeaderTimeout, and a client that
// trickles its body after ReadTimeout, while a normal upload of several MB on another connection goes
// through at the same time.
func TestSlowClientsAreCutOff(t *testing.T) {
	const (
		readHeader = time.Second
		read       = 2 * time.Second
		interval   = 300 * time.Millisecond
	)
	ln, err := httpapi.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	mux := httpapi.NewMux()
	mux.Handle("POST /upload", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "read body: %v", err)
		}
		httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(n, 10))
		return nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- httpapi.Serve(ctx, ln, mux, servicetest.Discard, httpapi.WithTimeouts(httpapi.ServerTimeouts{
			ReadHeader: readHeader, Read: read, Write: 10 * time.Second, Idle: 10 * time.Second}))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	// Either would take 30 s to send its request at this pace.
	slowHeaders := newTrickle("POST /upload HTTP/1.1\r\nHost: imgmill\r\n",
		"X-Slow: "+strings.Repeat("a", 100)+"\r\n\r\n", interval, 10*time.Second)
	slowBody := newTrickle("POST /upload HTTP/1.1\r\nHost: imgmill\r\nContent-Length: 100\r\n\r\n",
		strings.Repeat("b", 100), interval, 10*time.Second)
	for _, c := range []*trickle{slowHeaders, slowBody} {
		go c.run(addr)
		t.Cleanup(func() { <-c.finished }) // before the server stops, also when the test fails early
		<-c.started
	}

	// Meanwhile a normal upload of a few MB succeeds.
	hc := servicetest.NewHTTPClient(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	start := time.Now()
	r := servicetest.Call(t, hc, http.MethodPost, "http://"+addr+"/upload", bytes.NewReader(payload))
	if r.Status != 200 || r.Body != strconv.Itoa(len(payload)) {
		t.Errorf("normal upload of %d bytes during the slow clients = %d %q", len(payload), r.Status, r.Body)
	}
	t.Logf("normal upload of %d MiB took %v", len(payload)>>20, time.Since(start))

	for _, c := range []struct {
		name     string
		tr       *trickle
		min, max time.Duration
	}{
		{"slow headers", slowHeaders, readHeader - 200*time.Millisecond, readHeader + 3*time.Second},
		{"slow body", slowBody, read - 200*time.Millisecond, read + 3*time.Second},
	} {
		<-c.tr.finished
		if c.tr.err != nil {
			t.Errorf("%s: %v", c.name, c.tr.err)
			continue
		}
		t.Logf("%s: cut off after %v, reply %q", c.name, c.tr.took, c.tr.reply)
		if c.tr.took < c.min || c.tr.took > c.max {
			t.Errorf("%s: cut off after %v, want between %v and %v", c.name, c.tr.took, c.min, c.max)
		}
		if strings.Contains(c.tr.reply, "HTTP/1.1 200") {
			t.Errorf("%s: the server answered 200: %q", c.name, c.tr.reply)
		}
	}
}

// Headers over MaxHeaderBytes get a 431 that says so as every refusal does, "Error: ...", and the
// handler never runs; headers just under it pass.
func TestLargeHeadersRefused(t *testing.T) {
	ran := 0
	srv := servicetest.Serve(t, httpapi.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ran++ }), servicetest.Discard).Handler)
	hc := servicetest.NewHTTPClient(t)
	for _, tc := range []struct {
		size int
		want int
	}{{httpapi.MaxHeaderBytes - 1024, http.StatusOK}, {httpapi.MaxHeaderBytes + 1, http.StatusRequestHeaderFieldsTooLarge}, {512 << 10, http.StatusRequestHeaderFieldsTooLarge}} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
		req.Header.Set("X-Filler", strings.Repeat("a", tc.size))
		r := servicetest.MustDo(t, hc, req)
		if r.Status != tc.want || (tc.want != http.StatusOK && !strings.HasPrefix(r.Body, "Error: ")) {
			t.Errorf("%d bytes of header: %d %q, want %d with an Error: text", tc.size, r.Status, r.Body, tc.want)
		}
	}
	if ran != 1 {
		t.Errorf("the handler ran %d times, want once (for the headers under the limit)", ran)
	}
}
