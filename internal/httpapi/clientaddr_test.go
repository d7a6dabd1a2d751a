package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func TestClientAddr(t *testing.T) {
	for _, c := range []struct {
		remote string
		xff    []string
		trust  bool
		want   string
	}{
		{"192.0.2.7:5000", nil, false, "192.0.2.7"},
		{"192.0.2.7:5001", []string{"203.0.113.1"}, false, "192.0.2.7"},
		{"[::ffff:192.0.2.7]:5000", nil, false, "192.0.2.7"},
		{"[2001:db8:aa:bb:1:2:3:4]:443", nil, false, "2001:db8:aa:bb::/64"},
		{"[fe80::1%eth0]:443", nil, false, "fe80::/64"},
		{"192.0.2.7:5000", []string{"203.0.113.1"}, true, "203.0.113.1"},
		{"192.0.2.7:5000", []string{"198.51.100.1, 203.0.113.1"}, true, "203.0.113.1"},
		{"192.0.2.7:5000", []string{"203.0.113.1", "203.0.113.2 "}, true, "203.0.113.2"},
		{"192.0.2.7:5000", []string{"2001:db8::5"}, true, "2001:db8::/64"},
		{"192.0.2.7:5000", []string{"not an address"}, true, "192.0.2.7"},
		{"192.0.2.7:5000", nil, true, "192.0.2.7"},
		{"pipe", nil, false, "pipe"},
	} {
		r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
		if c.xff != nil {
			r.Header["X-Forwarded-For"] = c.xff
		}
		if got := httpapi.ClientAddr(r, c.trust); got != c.want {
			t.Errorf("ClientAddr(%s, X-Forwarded-For %q, trust %v) = %q, want %q", c.remote, c.xff, c.trust, got, c.want)
		}
	}
}
