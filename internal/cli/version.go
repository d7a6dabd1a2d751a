package cli

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
)

func versionCommand() command {
	return command{name: "version", summary: "print imgmill's version and the revision it was built from",
		about: "Prints the module version, the VCS revision, its time and whether the tree had changes when it\n" +
			"was built, and the Go version (from the build information the Go toolchain embeds).",
		define: func(f *flags) runner {
			return func(context.Context, []string) error {
				bi, ok := debug.ReadBuildInfo()
				if !ok {
					return fmt.Errorf("this binary carries no build information")
				}
				writeVersion(f.env.stdout, bi)
				return nil
			}
		}}
}

// writeVersion prints bi as "imgmill VERSION" and a line per VCS setting it has. A binary built by
// go build in a checkout has the revision but the version (devel); one from go install module@version
// has the version but no revision.
func writeVersion(w io.Writer, bi *debug.BuildInfo) {
	fmt.Fprintf(w, "imgmill %s\n", bi.Main.Version)
	labels := map[string]string{"vcs.revision": "revision", "vcs.time": "time", "vcs.modified": "modified"}
	for _, key := range []string{"vcs.revision", "vcs.time", "vcs.modified"} {
		for _, s := range bi.Settings {
			if s.Key == key {
				fmt.Fprintf(w, "%-9s%s\n", labels[key], s.Value)
			}
		}
	}
	fmt.Fprintf(w, "%-9s%s\n", "go", bi.GoVersion)
}
