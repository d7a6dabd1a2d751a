package frontend

import (
	"bytes"
	"testing"
	"time"
)

// SetKeepAliveEvery changes how often event streams send a keep-alive comment, until restore.
func SetKeepAliveEvery(d time.Duration) (restore func()) {
	old := keepAliveEvery
	keepAliveEvery = d
	return func() { keepAliveEvery = old }
}

// RenderTaskPage renders the page of a finished task whose upload was named name.
func RenderTaskPage(t testing.TB, name string) string {
	var b bytes.Buffer
	if err := pages.Execute(&b, taskPage{Title: "Finished", ID: "abc", Name: name, Say: "Your image is ready.", Finished: true}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
