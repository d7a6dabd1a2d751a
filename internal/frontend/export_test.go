package frontend

import "time"

// SetKeepAliveEvery changes how often event streams send a keep-alive comment, until restore.
func SetKeepAliveEvery(d time.Duration) (restore func()) {
	old := keepAliveEvery
	keepAliveEvery = d
	return func() { keepAliveEvery = old }
}

// UniqueName is uniqueName, for tests.
var UniqueName = uniqueName
