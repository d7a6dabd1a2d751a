// Package cli is imgmill's command line: a subcommand per service, serve (all of them in one process),
// bench, and the client commands submit, status and get.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/imgmill/imgmill/internal/publicid"
)

// command is one subcommand. define registers its flags and returns what runs it once they are parsed;
// a command that takes positional arguments (positional) gets them, any other refuses them. Commands
// define their flags apart from running, so that tests and the configuration reference can list every
// flag of every command.
type command struct {
	name, summary string
	// about is the help text's description, after "Usage: imgmill NAME [flags]".
	about      string
	positional bool
	define     func(f *flags) runner
}

// runner runs a command whose flags are parsed, with its positional arguments.
type runner func(ctx context.Context, args []string) error

// env is what a subcommand gets from the outside world.
type env struct {
	getenv         func(string) string
	stdin          io.Reader // nil: none (submit - is refused)
	stdout, stderr io.Writer
}

func commands() []command {
	return []command{
		serveCommand(),
		kvCommand(),
		databaseCommand(),
		storageCommand(),
		masterCommand(),
		workerCommand(),
		frontendCommand(),
		benchCommand(),
		submitCommand(),
		statusCommand(),
		getCommand(),
		deleteCommand(),
		cancelCommand(),
		retryCommand(),
		backupCommand(),
		fsckCommand(),
		versionCommand(),
	}
}

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

// ExitCode is the process exit status for an error Run returned: 2 for a command-line mistake, 130
// (the shell's 128+SIGINT) for a submit interrupted with tasks left running, 1 otherwise.
func ExitCode(err error) int {
	var intr *interruptedError
	switch {
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &intr):
		return 130
	}
	return 1
}

// Run runs the imgmill command line args (args[0] is the program name) until ctx ends or the command
// is done, without standard input.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return RunIO(ctx, args, getenv, nil, stdout, stderr)
}

// RunIO is Run with standard input (nil: none), which `submit -` reads; main only calls it.
func RunIO(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := &env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) < 2 || args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		usage(stdout)
		if len(args) < 2 {
			return fmt.Errorf("%w: missing command", errUsage)
		}
		return nil
	}
	for _, c := range commands() {
		if c.name != args[1] {
			continue
		}
		f := newFlags(e, c)
		run := c.define(f)
		var pos []string
		var err error
		if c.positional {
			pos, err = f.parseInterspersed(args[2:])
		} else {
			err = f.parse(args[2:])
		}
		if err == nil {
			err = run(ctx, pos)
		}
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	usage(stderr)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[1])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "imgmill: asynchronous image processing, as six HTTP services.")
	fmt.Fprintln(w, "\nUsage: imgmill COMMAND [flags]   (imgmill COMMAND --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

// flags is a subcommand's flag set; every flag can also be set by the environment variable IMGMILL_<NAME>
// (upper case, dashes as underscores). A flag on the command line wins.
type flags struct {
	*flag.FlagSet
	env      *env
	cmd      string
	about    string // the command's description, for its help
	logLevel slog.Level
	// deprecated maps an old spelling to the flag's name now: accepted on the command line, with a
	// warning, but never read from the environment, where its variable may mean something else.
	deprecated map[string]string
}

func newFlags(e *env, c command) *flags {
	fs := flag.NewFlagSet("imgmill "+c.name, flag.ContinueOnError)
	// The flag package would print its error and the whole help on a mistake; Run's caller prints the
	// error once, and the help is printed for --help only (printHelp).
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	f := &flags{FlagSet: fs, env: e, cmd: c.name, about: c.about, deprecated: map[string]string{}}
	fs.TextVar(&f.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return f
}

// printHelp prints the command's help to stderr: its description, then each flag as it is spelled on
// the command line, with its variable and its default.
func (f *flags) printHelp() {
	w := f.env.stderr
	fmt.Fprintf(w, "Usage: imgmill %s [flags]\n\n%s\n\nFlags (each also settable by the environment variable shown):\n", f.cmd, f.about)
	f.VisitAll(func(fl *flag.Flag) {
		if now, ok := f.deprecated[fl.Name]; ok {
			fmt.Fprintf(w, "  %s\n    \tdeprecated: use %s\n", flagSpelling(fl.Name), flagSpelling(now))
			return
		}
		fmt.Fprintf(w, "  %s", flagSpelling(fl.Name))
		if v := envName(fl.Name); v != "" {
			fmt.Fprintf(w, " (%s)", v)
		}
		fmt.Fprintf(w, "\n    \t%s", fl.Usage)
		if d := defaultText(fl); d != "" {
			fmt.Fprintf(w, " (default %s)", d)
		}
		fmt.Fprintln(w)
	})
}

// flagSpelling is how the help shows a flag: -o for a one-letter name, --name otherwise.
func flagSpelling(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// defaultText is the default a flag's help shows: none for an empty value or a boolean that is off
// (a flag's absence says that), the value as it would be typed otherwise.
func defaultText(fl *flag.Flag) string {
	if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && fl.DefValue == "false" {
		return ""
	}
	if fl.DefValue == "" {
		return ""
	}
	if strings.ContainsAny(fl.DefValue, " \t\"") {
		return strconv.Quote(fl.DefValue)
	}
	return fl.DefValue
}

// parseError turns the flag package's error into a usage error that names the command's help.
func (f *flags) parseError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		f.printHelp()
		return err
	}
	return fmt.Errorf("%w: %v (imgmill %s --help lists its flags)", errUsage, err, f.cmd)
}

// envName is the environment variable of a flag, or "" for a one-letter flag (-o, -n), which the
// environment does not set: IMGMILL_O would be a trap.
func envName(flagName string) string {
	if len(flagName) == 1 {
		return ""
	}
	return "IMGMILL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// alias defines old as a deprecated spelling of the flag now (defined already): it sets the same value
// and warns.
func (f *flags) alias(old, now string) {
	fl := f.Lookup(now)
	f.deprecated[old] = now
	f.Var(&aliasValue{Value: fl.Value, warn: func() {
		fmt.Fprintf(f.env.stderr, "imgmill %s: --%s is deprecated and will be removed: use --%s (%s)\n", f.cmd, old, now, envName(now))
	}}, old, "deprecated: use --"+now)
}

// aliasValue is a deprecated flag: it sets the flag it stands for.
type aliasValue struct {
	flag.Value
	warn func()
}

func (a *aliasValue) Set(s string) error {
	a.warn()
	return a.Value.Set(s)
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return f.parseError(err)
	}
	if f.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, f.Arg(0))
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for old, now := range f.deprecated {
		set[now] = set[now] || set[old]
	}
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if _, old := f.deprecated[fl.Name]; old || set[fl.Name] {
			return
		}
		name := envName(fl.Name)
		if name == "" {
			return
		}
		if v := f.env.getenv(name); v != "" {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s=%q: %v", errUsage, name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// parseInterspersed parses flags that may come before, between or after the positional arguments
// ("status ID --server URL"), applies the IMGMILL_* variables like parse, and returns the positionals.
// Everything after "--" is positional, and so is a public id that starts with a dash (one in 64 do).
func (f *flags) parseInterspersed(args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		a := args[0]
		switch {
		case a == "--":
			pos = append(pos, args[1:]...)
			args = nil
		case strings.HasPrefix(a, "-") && a != "-" && !looksLikePublicID(a):
			// A flag, parsed with its value when it takes one.
			n := 1
			if f.takesValue(a) && len(args) > 1 {
				n = 2
			}
			if err := f.Parse(args[:n]); err != nil {
				return nil, f.parseError(err)
			}
			args = args[n:]
		default:
			pos = append(pos, a)
			args = args[1:]
		}
	}
	return pos, f.parse(nil)
}

// takesValue reports whether arg is a flag that takes the next argument as its value.
func (f *flags) takesValue(arg string) bool {
	name := strings.TrimLeft(arg, "-")
	if name == arg || strings.Contains(name, "=") {
		return false
	}
	fl := f.Lookup(name)
	if fl == nil {
		return false
	}
	b, ok := fl.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

// looksLikePublicID reports whether arg has the shape of a public id: publicid.Len characters of the
// URL-safe base64 alphabet. No flag name is that long, so it is never taken for one.
func looksLikePublicID(arg string) bool {
	if len(arg) != publicid.Len {
		return false
	}
	for i := 0; i < len(arg); i++ {
		switch c := arg[i]; {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

func (f *flags) logger(service string) *slog.Logger {
	l := slog.New(slog.NewTextHandler(f.env.stderr, &slog.HandlerOptions{Level: f.logLevel}))
	if service != "" {
		l = l.With("service", service)
	}
	return l
}
