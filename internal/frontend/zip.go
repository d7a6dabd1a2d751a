package frontend

import (
	"archive/zip"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// ZipName is the file name GET /api/tasks.zip offers, and MissingName the entry in it listing the
// tasks asked for whose result it does not hold.
const (
	ZipName     = "imgmill-results.zip"
	MissingName = "MISSING.txt"
)

// handleTasksZip streams the finished results among the tasks of ?ids=... as one zip, entry by entry
// as storage sends them, never holding the archive nor a whole image: entries are stored, not
// compressed (the images are compressed already), and named as their downloads are. The tasks not
// finished, or unknown, are listed with the reason in a MISSING.txt entry. A refusal before the first
// byte (bad ids, the master away) is a JSON error; a failure later cuts the zip off, so that the
// client sees a broken download rather than a short archive.
func (s *server) handleTasksZip(w http.ResponseWriter, r *http.Request) error {
	publics, err := publicIDs(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	found, err := s.statuses(ctx, publics)
	if err != nil {
		return err
	}
	var tasks []named
	var missing []string
	for _, n := range found {
		switch {
		case n.err != nil:
			missing = append(missing, n.public+"\t"+httpapi.ErrorMessage(n.err))
		case n.st.State != wire.FinishedWord:
			missing = append(missing, n.public+"\t"+string(n.st.State))
		default:
			tasks = append(tasks, n)
		}
	}

	started := false
	start := func() *zip.Writer {
		h := w.Header()
		h.Set("Content-Type", "application/zip")
		h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", ZipName))
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		started = true
		return zip.NewWriter(w)
	}
	var zw *zip.Writer
	names := map[string]bool{}
	for _, t := range tasks {
		img, err := s.master.Get(ctx, t.id)
		if err != nil {
			err = publicError(err, t.id)
			if permanent(err) { // gone since its status was read (deleted, requeued)
				missing = append(missing, t.public+"\t"+httpapi.ErrorMessage(err))
				continue
			}
			if !started {
				return err
			}
			cut(r, err)
		}
		if zw == nil {
			zw = start()
		}
		f, err := zw.CreateHeader(&zip.FileHeader{Name: uniqueName(DownloadName(t.st, t.public, img.ContentType), names),
			Method: zip.Store, Modified: t.st.FinishedAt})
		if err == nil {
			_, err = io.Copy(f, img)
		}
		img.Close()
		if err != nil {
			cut(r, fmt.Errorf("zip entry of %s: %w", t.public, err))
		}
	}
	if zw == nil {
		zw = start()
	}
	if len(missing) > 0 {
		f, err := zw.CreateHeader(&zip.FileHeader{Name: uniqueName(MissingName, names), Method: zip.Deflate, Modified: time.Now()})
		if err == nil {
			_, err = io.WriteString(f, "Tasks asked for whose result this archive does not hold (id, then state or reason):\n"+
				strings.Join(missing, "\n")+"\n")
		}
		if err != nil {
			cut(r, fmt.Errorf("zip entry %s: %w", MissingName, err))
		}
	}
	if err := zw.Close(); err != nil {
		cut(r, fmt.Errorf("zip directory: %w", err))
	}
	return nil
}

// cut logs why a streamed answer cannot be finished and aborts the connection, so that the client sees
// the download fail rather than end short.
func cut(r *http.Request, err error) {
	level := slog.LevelWarn
	if r.Context().Err() != nil { // the client went away: nothing failed here
		level = slog.LevelDebug
	}
	httpapi.LoggerFrom(r.Context()).Log(r.Context(), level, "streamed answer cut off", "err", err)
	panic(http.ErrAbortHandler)
}

// uniqueName is name, or name with " (2)", " (3)", ... before its extension, whichever is not yet in
// taken; it is added to taken.
func uniqueName(name string, taken map[string]bool) string {
	ext := path.Ext(name)
	base := strings.TrimSuffix(name, ext)
	unique := name
	for n := 2; taken[unique]; n++ {
		unique = fmt.Sprintf("%s (%d)%s", base, n, ext)
	}
	taken[unique] = true
	return unique
}
