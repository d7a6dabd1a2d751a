package frontend

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// crossSite refuses the requests that change something (uploads, cancels and deletes: every method but
// GET, HEAD and OPTIONS) when a browser sends them for a page of another site: without it any web page
// could make its visitors upload here, each from their own address, past the per-address limit, or
// delete the tasks whose links they opened. Browsers say
// where a request comes from (Sec-Fetch-Site, Origin); the check is the standard library's
// (http.CrossOriginProtection). Requests without those headers (curl, scripts, the reference's
// clients) are not a browser acting for another site, and pass.
type crossSite struct {
	cop *http.CrossOriginProtection
	err error // an allowed origin that is not one
}

func newCrossSite(allowed []string) crossSite {
	c := crossSite{cop: http.NewCrossOriginProtection()}
	for _, o := range allowed {
		if err := c.cop.AddTrustedOrigin(o); err != nil {
			c.err = fmt.Errorf("allowed origin %q: %w", o, err)
			return c
		}
	}
	return c
}

// refuse answers 403 to cross-site requests that change something, in the JSON API's form under /api/
// and in the reference's "Error: ..." form elsewhere.
func (c crossSite) refuse(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := c.cop.Check(r); err != nil {
			from := r.Header.Get("Origin")
			if from == "" {
				from = "another site"
			}
			refusal := func(http.ResponseWriter, *http.Request) error {
				if r.Method == http.MethodDelete || strings.HasSuffix(r.URL.Path, "/cancel") {
					return httpapi.Errorf(http.StatusForbidden, "requests to cancel or delete a task from a page of %s "+
						"are not accepted here; use this site's own page, or no browser", from)
				}
				return httpapi.Errorf(http.StatusForbidden, "uploads from a page of %s are not accepted here; "+
					"upload from this site's own page, or without a browser", from)
			}
			if strings.HasPrefix(r.URL.Path, "/api/") {
				httpapi.JSONHandlerFunc(refusal).ServeHTTP(w, r)
			} else {
				httpapi.HandlerFunc(refusal).ServeHTTP(w, r)
			}
			return
		}
		next.ServeHTTP(w, r)
	})
}
