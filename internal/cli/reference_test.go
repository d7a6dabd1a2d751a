package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md from the flag definitions")

// referencePath is the configuration reference, from this package's directory.
var referencePath = filepath.Join("..", "..", "docs", "configuration.md")

// reference renders every command's flags as the configuration reference.
func reference() string {
	var b strings.Builder
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("<!-- Generated from the flag definitions by `go test ./internal/cli -run TestConfigurationReference -update`; do not edit. -->\n\n")
	b.WriteString("Every flag can also be set by its environment variable, `IMGMILL_` and the flag's name in upper case with\n" +
		"dashes as underscores (`--max-upload` is `IMGMILL_MAX_UPLOAD`); a flag on the command line wins. A name\n" +
		"means the same on every command that has it. Limits take 0 for no limit; durations are Go durations\n" +
		"(`500ms`, `2m`, `1h30m`). One-letter flags (`-o`, `-n`) have no variable. Deprecated spellings still work on the command line, with a warning, and are\n" +
		"never read from the environment.\n\n")
	e, _ := quietEnv(nil)
	for _, c := range commands() {
		f := newFlags(e, c)
		c.define(f)
		fmt.Fprintf(&b, "## imgmill %s\n\n%s\n\n", c.name, strings.ReplaceAll(c.about, "\n", " "))
		b.WriteString("| flag | variable | default | what it sets |\n|---|---|---|---|\n")
		var deprecated []string
		f.VisitAll(func(fl *flag.Flag) {
			if now, old := f.deprecated[fl.Name]; old {
				deprecated = append(deprecated, fmt.Sprintf("`--%s` (use `--%s`)", fl.Name, now))
				return
			}
			def := "`" + fl.DefValue + "`"
			if fl.DefValue == "" {
				def = "none"
			}
			env := "none"
			if v := envName(fl.Name); v != "" {
				env = "`" + v + "`"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", flagSpelling(fl.Name), env, def, strings.ReplaceAll(fl.Usage, "|", `\|`))
		})
		if len(deprecated) > 0 {
			fmt.Fprintf(&b, "\nDeprecated: %s.\n", strings.Join(deprecated, ", "))
		}
		b.WriteString("\n")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

// The configuration reference in docs/ is the flags as they are defined.
func TestConfigurationReference(t *testing.T) {
	want := reference()
	if *update {
		if err := os.WriteFile(referencePath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(referencePath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is not current: run go test ./internal/cli -run TestConfigurationReference -update", referencePath)
	}
	for _, c := range commands() {
		if !strings.Contains(want, "## imgmill "+c.name+"\n") {
			t.Errorf("the reference lacks imgmill %s", c.name)
		}
	}
}
