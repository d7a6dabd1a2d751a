package master_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestNewRefusesScanBomb: a progressive JPEG of 1,000 scans passes every size limit (55 KB, 49 MP) but
// would cost a worker seconds of CPU per hundred scans: its upload is refused with 422 as its bytes
// stream to storage, nothing is stored, and its pending task is given up at once.
func TestNewRefusesScanBomb(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	bomb := testimage.JPEGScanBomb(7000, 7000, 1000)
	want := fmt.Sprintf("Error: progressive JPEG with more than %d scans, over the limit of %[1]d (encoders write at most a few dozen)",
		imageop.MaxJPEGScans)
	for id, send := range []func(*testing.T, []byte) servicetest.Reply{s.upload, s.postChunked} {
		r := send(t, bomb)
		if r.Status != http.StatusUnprocessableEntity || r.Body != want {
			t.Errorf("upload %d of the scan bomb: %d %q, want 422 %q", id, r.Status, r.Body, want)
		}
		if err := servicetest.ConventionError(http.MethodPost, "/new", r); err != nil {
			t.Error(err)
		}
		if got, ok := s.StoredImage(t, int64(id), wire.WorkingImage); ok {
			t.Errorf("upload %d: storage kept %d bytes of the refused image", id, len(got))
		}
		s.expectAbandoned(t, int64(id))
	}
	s.ExpectNoClaimable(t)

	// At the budget, the same image is an image like any other.
	atLimit := testimage.JPEGScanBomb(7000, 7000, imageop.MaxJPEGScans)
	s.expectStored(t, "JPEG of 100 scans", s.upload(t, atLimit), atLimit)
}
