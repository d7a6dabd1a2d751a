package cli

import (
	"context"
	"fmt"

	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/frontend"
)

func backupCommand() command {
	return command{name: "backup", summary: "copy a data directory's embedded stores, while the services run",
		about: "Copies the data directory's task database (one consistent snapshot, with SQLite's VACUUM INTO),\n" +
			"kv store, public id secret and images (with the extended attributes that hold their fences) into\n" +
			"the new directory --to, while the services go on running. The copy is a data directory: restore\n" +
			"it by stopping the services and starting them with --data on it (or moving it into place).\n" +
			"It is written under --to plus .partial and renamed when complete.",
		define: func(f *flags) runner {
			var data, to string
			f.dataDir(&data)
			f.backupTo(&to)
			return func(ctx context.Context, _ []string) error {
				if to == "" {
					return fmt.Errorf("%w: backup needs --to DIR", errUsage)
				}
				r, err := engines.Backup(ctx, data, to, frontend.SecretFile)
				if err != nil {
					return err
				}
				if r.Tasks {
					fmt.Fprintf(f.env.stdout, "%s\n", engines.TasksFile)
				}
				for _, name := range r.Files {
					fmt.Fprintf(f.env.stdout, "%s\n", name)
				}
				fmt.Fprintf(f.env.stdout, "%s: %d images, %d bytes\n", engines.ImagesDir, r.Blobs, r.BlobBytes)
				fmt.Fprintf(f.env.stdout, "backup complete: %s\n", to)
				return nil
			}
		},
	}
}
