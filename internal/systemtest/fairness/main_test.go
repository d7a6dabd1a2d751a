package fairness

import (
	"testing"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// The tests may start imgmill's services as processes of this test binary (see deploytest.Main).
func TestMain(m *testing.M) { deploytest.Main(m) }
