package imageop

import "testing"

func TestExtension(t *testing.T) {
	for ct, want := range map[string]string{
		"image/png":                 ".png",
		"image/jpeg":                ".jpg",
		"image/gif":                 ".gif",
		"image/webp":                ".webp",
		"image/bmp":                 ".bmp",
		"image/tiff":                ".tiff",
		"image/png; charset=binary": ".png",
		"":                          "",
		"not a type;;":              "",
		"application/x-unknown-xyz": "",
	} {
		if got := Extension(ct); got != want {
			t.Errorf("Extension(%q) = %q, want %q", ct, got, want)
		}
	}
}
