package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgmill/imgmill/internal/atomicfile"
)

// Backup writes a consistent copy of the task database at path to the new file dst, while the services
// go on using the database, in this process or another. VACUUM INTO reads one snapshot (the WAL
// included) in a read transaction, which writers do not wait for, and writes a compact database of the
// same schema version, which Open opens like the original. The copy is fsynced and checked.
func Backup(ctx context.Context, path, dst string) (err error) {
	// Opening a missing file would create an empty database: say it is missing instead.
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("sqlitestore: backup %q: %w", path, err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sqlitestore: backup to %q: the file exists, or cannot be checked (%v)", dst, err)
	}
	db, err := sql.Open("sqlite", dsn(path, "_pragma=busy_timeout(5000)"))
	if err != nil {
		return fmt.Errorf("sqlitestore: backup %q: %w", path, err)
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, dst); err != nil {
		return fmt.Errorf("sqlitestore: backup %q to %q: %w", path, dst, err)
	}
	if err := syncFile(dst); err != nil {
		return fmt.Errorf("sqlitestore: backup to %q: %w", dst, err)
	}
	copied, err := sql.Open("sqlite", dsn(dst, "mode=ro"))
	if err != nil {
		return fmt.Errorf("sqlitestore: check backup %q: %w", dst, err)
	}
	defer func() { err = errors.Join(err, copied.Close()) }()
	var check string
	if err := copied.QueryRowContext(ctx, `PRAGMA quick_check`).Scan(&check); err != nil {
		return fmt.Errorf("sqlitestore: check backup %q: %w", dst, err)
	}
	if check != "ok" {
		return fmt.Errorf("sqlitestore: check backup %q: %s", dst, check)
	}
	return nil
}

// syncFile makes the file at path, and its entry in its directory, durable.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}
