package httpapi

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientAddr names the client of r, for per-client limits and for the owner of its tasks: its IPv4 address, or the /64 network of its
// IPv6 address (one subscriber usually has a whole /64, so single addresses would be free to rotate).
// The address is the connection's peer; with trustProxy, the last X-Forwarded-For entry, which the
// proxy in front appended, when it is an address.
func ClientAddr(r *http.Request, trustProxy bool) string {
	if trustProxy {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			last := xff[len(xff)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			if a, err := netip.ParseAddr(strings.TrimSpace(last)); err == nil {
				return addrKey(a)
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	return addrKey(a)
}

func addrKey(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
