package attacks

import (
	"testing"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// The tests start `imgmill serve` in this test binary (see deploytest.Main).
func TestMain(m *testing.M) { deploytest.Main(m) }
