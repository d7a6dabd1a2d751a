package lifecycle

import (
	"testing"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// The tests start imgmill's services as processes of this test binary (see deploytest.Main).
func TestMain(m *testing.M) { deploytest.Main(m) }
