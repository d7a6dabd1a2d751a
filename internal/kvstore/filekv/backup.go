package filekv

import (
	"fmt"
	"maps"
	"os"
)

// Backup copies the snapshot at path to the new file dst without its entries that have a TTL: those are
// the services' registrations, which the running services renew and the ones started on a copy make
// anew. Copied, they would send a deployment started on the copy to the original's services until they
// lapsed. It returns how many entries it copied. The file at path may be in use by a Store meanwhile:
// every snapshot is written whole, by an atomic rename.
func Backup(path, dst string) (int, error) {
	m, err := load(path)
	if err != nil {
		return 0, fmt.Errorf("filekv: backup %s: %w", path, err)
	}
	if _, err := os.Stat(path); err != nil {
		return 0, fmt.Errorf("filekv: backup %s: %w", path, err) // load takes a missing file for an empty store
	}
	maps.DeleteFunc(m, func(_ string, it item) bool { return !it.expires.IsZero() })
	data, err := encode(m)
	if err != nil {
		return 0, fmt.Errorf("filekv: backup %s: %w", path, err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, fmt.Errorf("filekv: backup %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("filekv: backup to %s: %w", dst, err)
	}
	return len(m), nil
}
