package imageop

import "mime"

// Extension is the file name extension for an image's Content-Type: ".png", ".jpg", ".gif", ".webp",
// ".bmp" or ".tiff" for the formats imgmill reads and writes, the system's first guess for other
// types, "" when unknown.
func Extension(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	switch mt {
	case "image/png":
		return ".png"
	case "image/jpeg":
		return ".jpg"
	case "image/gif":
		return ".gif"
	case "image/webp":
		return ".webp"
	case "image/bmp":
		return ".bmp"
	case "image/tiff":
		return ".tiff"
	}
	if exts, _ := mime.ExtensionsByType(mt); len(exts) > 0 {
		return exts[0]
	}
	return ""
}
