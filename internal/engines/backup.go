package engines

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

// BackupReport is what Backup copied.
type BackupReport struct {
	Tasks     bool     // the task database
	Files     []string // other files of the data directory (the kv store's, and the ones asked for)
	Blobs     int64    // images
	BlobBytes int64
}

// Backup copies the embedded stores of dataDir (the kv store without the services' registrations), and
// the named files of it (such as the frontend's public id secret), into the new directory to, a data directory the services can run on as it is: restoring is
// moving it into place. The services may run meanwhile. The task database is copied first, as one
// snapshot, then the images: every task of the copy that has an image finds it in the copy (an upload is
// stored before its task is activated, a result before its task finishes), and an image stored after
// the snapshot is at worst an orphan in the copy. Everything is written under to+".partial",
// fsynced, and renamed to to at the end, so to exists only once the backup is complete.
func Backup(ctx context.Context, dataDir, to string, files ...string) (BackupReport, error) {
	var r BackupReport
	if _, err := os.Lstat(to); !errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("backup to %s: it exists, or cannot be checked (%v)", to, err)
	}
	partial := to + ".partial"
	if err := os.Mkdir(partial, 0o700); err != nil {
		// An existing one is a backup in progress, or one that was interrupted: its owner removes it.
		return r, fmt.Errorf("backup: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(partial)
		}
	}()

	tasks := filepath.Join(dataDir, TasksFile)
	switch _, err := os.Stat(tasks); {
	case err == nil:
		if err := sqlitestore.Backup(ctx, tasks, filepath.Join(partial, TasksFile)); err != nil {
			return r, fmt.Errorf("backup: %w", err)
		}
		r.Tasks = true
	case !errors.Is(err, fs.ErrNotExist):
		return r, fmt.Errorf("backup: %w", err)
	}
	switch _, err := filekv.Backup(filepath.Join(dataDir, KVFile), filepath.Join(partial, KVFile)); {
	case err == nil:
		r.Files = append(r.Files, KVFile)
	case !errors.Is(err, fs.ErrNotExist):
		return r, fmt.Errorf("backup: %w", err)
	}
	for _, name := range files {
		switch err := copyFile(filepath.Join(dataDir, name), filepath.Join(partial, name)); {
		case err == nil:
			r.Files = append(r.Files, name)
		case !errors.Is(err, fs.ErrNotExist):
			return r, fmt.Errorf("backup: %w", err)
		}
	}
	images := filepath.Join(dataDir, ImagesDir)
	switch _, err := os.Stat(images); {
	case err == nil:
		if r.Blobs, r.BlobBytes, err = fileblob.Copy(ctx, images, filepath.Join(partial, ImagesDir)); err != nil {
			return r, fmt.Errorf("backup: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return r, fmt.Errorf("backup: %w", err)
	}
	if !r.Tasks && len(r.Files) == 0 && r.Blobs == 0 {
		return r, fmt.Errorf("backup: nothing to back up in %s (no %s, %s or %s)", dataDir, TasksFile, KVFile, ImagesDir)
	}

	if err := atomicfile.SyncDir(partial); err != nil {
		return r, fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(partial, to); err != nil {
		return r, fmt.Errorf("backup: %w", err)
	}
	done = true
	if err := atomicfile.SyncDir(filepath.Dir(to)); err != nil {
		return r, fmt.Errorf("backup: %w", err)
	}
	return r, nil
}

// copyFile copies the file src, written whole by atomic renames, to the new file dst with its
// permissions (the public id secret is the owner's only), and fsyncs it.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
