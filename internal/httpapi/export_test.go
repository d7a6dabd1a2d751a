package httpapi

// SetConstantTimeCompare replaces the comparison RequireToken uses and returns a function that restores
// it; tests use it to see the constant-time comparison is the one called.
func SetConstantTimeCompare(f func(x, y []byte) int) (restore func()) {
	old := constantTimeCompare
	constantTimeCompare = f
	return func() { constantTimeCompare = old }
}
