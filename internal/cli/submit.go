package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgmill/imgmill/internal/apiclient"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// The client commands: submit, status and get, against the frontend's public JSON API.

// wait defines --wait, the client commands' wait for their tasks.
func (f *flags) wait() *bool {
	return f.Bool("wait", false, "wait until the task is finished or failed (submit: every task), and download the result")
}

func (f *flags) server() *string {
	return f.String("server", apiclient.DefaultServer, "the imgmill frontend's URL")
}

// newAPIClient is a client of the frontend at --server.
func newAPIClient(server string) (*apiclient.Client, error) {
	c, err := apiclient.New(server)
	if err != nil {
		return nil, fmt.Errorf("%w: --server: %v", errUsage, err)
	}
	return c, nil
}

func submitCommand() command {
	return command{name: "submit", summary: "upload images to a running imgmill (--wait: and download the results)", positional: true,
		about: "Uploads images (FILE...; - for standard input) to the frontend's /api/tasks and prints \"FILE<tab>ID\" per file.\n" +
			"--op applies a chain of operations, comma-separated, in order (e.g. resize:800x600,grayscale,sharpen:1.5);\n" +
			"the server checks it, and a chain it refuses exits 2 with its reason. --list-ops prints the operations.\n" +
			"With --wait, waits for every task, downloads each result into --out as NAME.imgmill.EXT (stdin.imgmill.EXT\n" +
			"for -) and prints \"FILE<tab>ID<tab>RESULT\" per file as it is done, or the reason in place of RESULT\n" +
			"(ID - when the file was not sent), and the summary on stderr. Ctrl-C stops waiting, names the tasks\n" +
			"that keep running on the server and exits 130.\n" +
			"Usage: imgmill submit [flags] FILE...\n       imgmill submit --list-ops",
		define: defineSubmit}
}

func defineSubmit(f *flags) runner {
	e := f.env
	op := f.String("op", "", "the operations to apply, comma-separated, in order, e.g. resize:800x600,grayscale (empty: the default, swap)")
	listOps := f.Bool("list-ops", false, "print the operations the server offers, with their parameters and examples, and exit")
	server := f.server()
	wait := f.wait()
	out := f.String("out", ".", "with --wait: the directory the results are written to")
	conc := f.Int("parallel", 4, "uploads (and, with --wait, downloads) at a time")
	f.alias("concurrency", "parallel")
	return func(ctx context.Context, files []string) error {
		outSet := false
		f.Visit(func(fl *flag.Flag) { outSet = outSet || fl.Name == "out" })
		if *listOps {
			if len(files) > 0 {
				return fmt.Errorf("%w: --list-ops takes no FILE", errUsage)
			}
			c, err := newAPIClient(*server)
			if err != nil {
				return err
			}
			defer c.Close()
			ops, err := c.Operations(ctx)
			if err != nil {
				return err
			}
			fmt.Fprint(e.stdout, describeOperations(c.Base(), ops))
			return nil
		}
		switch {
		case len(files) == 0:
			return fmt.Errorf("%w: no FILE to submit (imgmill submit [flags] FILE...)", errUsage)
		case *conc < 1:
			return fmt.Errorf("%w: --parallel must be >= 1", errUsage)
		case outSet && !*wait:
			return fmt.Errorf("%w: --out needs --wait", errUsage)
		case countOf(files, "-") > 1:
			return fmt.Errorf("%w: standard input (-) can be submitted once", errUsage)
		case slices.Contains(files, "-") && e.stdin == nil:
			return fmt.Errorf("%w: no standard input to submit (-)", errUsage)
		}
		if *wait {
			if err := checkOutputNames(files, *out); err != nil {
				return err
			}
		}
		c, err := newAPIClient(*server)
		if err != nil {
			return err
		}
		defer c.Close()
		// The chain goes to the server as it is: the server parses it, and its 400 says what is wrong.
		if *wait {
			if err := os.MkdirAll(*out, 0o755); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		}
		b := &batch{c: c, e: e, op: *op, wait: *wait, out: *out, conc: *conc, files: files}
		if slices.Contains(files, "-") {
			path, err := spoolStdin(e.stdin)
			if err != nil {
				return err
			}
			defer os.Remove(path)
			b.stdin = path
		}
		return b.run(ctx)

	}
}

// opRefusedError is the server's refusal (400) of the --op chain: a usage mistake (exit 2), with the
// server's reason, and the catalogue when the server did not know a name.
type opRefusedError struct {
	op, server string
	err        *apiclient.Error
	catalogue  string // the operations, or "" when they do not help (or could not be listed)
}

func (e *opRefusedError) Error() string {
	op := e.op
	if op == "" {
		op = "(default)"
	}
	s := fmt.Sprintf("the server refused --op %q: %s (HTTP %d)", op, e.err.Msg, e.err.Status)
	if e.catalogue != "" {
		return s + "\n" + e.catalogue
	}
	return s + fmt.Sprintf("\n(imgmill submit --list-ops --server %s lists the operations and their parameters)", e.server)
}

func (e *opRefusedError) Unwrap() []error { return []error{errUsage, e.err} }

// listOperations is the short catalogue: a line per operation with its syntax and summary.
func listOperations(server string, ops []wire.OperationInfo) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "operations at %s (imgmill submit --list-ops for their parameters):", server)
	if len(ops) == 0 {
		sb.WriteString("\n  (none)")
	}
	for _, o := range ops {
		syntax := o.Syntax
		if syntax == "" {
			syntax = o.Name
		}
		fmt.Fprintf(&sb, "\n  %-11s %-37s %s", o.Name, syntax, summaryOf(o))
	}
	return sb.String()
}

// summary is the operation's one-line description (a server without summaries has a description).
func summaryOf(o wire.OperationInfo) string {
	if o.Summary != "" {
		return o.Summary
	}
	return o.Description
}

// describeOperations is the catalogue --list-ops prints: per operation its name and summary, what it does,
// its syntax, aliases, parameters with their ranges, allowed values and defaults, and an example.
func describeOperations(server string, ops []wire.OperationInfo) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Operations at %s. Chain them with commas; they apply in order:\n", server)
	sb.WriteString("  imgmill submit --op resize:800x600,grayscale,sharpen:1.5 FILE...\n")
	sb.WriteString("With no --op, an image gets the default, swap. Without convert a JPEG stays JPEG and the rest become PNG.\n")
	for _, o := range ops {
		fmt.Fprintf(&sb, "\n%s", o.Name)
		if s := summaryOf(o); s != "" {
			fmt.Fprintf(&sb, " - %s", s)
		}
		sb.WriteByte('\n')
		if o.Summary != "" && o.Description != "" {
			sb.WriteString(wrapText(o.Description, "    ", 100))
		}
		if o.Syntax != "" {
			fmt.Fprintf(&sb, "    syntax:   %s\n", o.Syntax)
		}
		if len(o.Aliases) > 0 {
			fmt.Fprintf(&sb, "    aliases:  %s\n", strings.Join(o.Aliases, ", "))
		}
		for i, p := range o.Params {
			label := "params:"
			if i > 0 {
				label = ""
			}
			fmt.Fprintf(&sb, "    %-9s %s\n", label, describeParam(p))
		}
		if o.Example != "" {
			fmt.Fprintf(&sb, "    example:  %s\n", o.Example)
		}
	}
	return sb.String()
}

// describeParam is one parameter on one line: name, type and range, default or required, description.
func describeParam(p wire.ParamInfo) string {
	num := func(f *float64) string { return strconv.FormatFloat(*f, 'f', -1, 64) }
	rng := ""
	if p.Min != nil && p.Max != nil {
		rng = num(p.Min) + ".." + num(p.Max)
	}
	var what string
	switch p.Type {
	case "enum":
		what = "one of " + strings.Join(p.Allowed, ", ")
	case "size":
		what = "WxH"
		if rng != "" {
			what += ", sides " + rng
		}
	case "geometry":
		what = "WxH or WxH+X+Y"
		if rng != "" {
			what += ", sides " + rng
		}
	default:
		what = p.Type
		if rng != "" {
			what += " " + rng
		}
	}
	switch {
	case p.Required:
		what += ", required"
	case p.Default != "":
		what += ", default " + p.Default
	default:
		what += ", optional"
	}
	s := fmt.Sprintf("%-9s %s", p.Name, what)
	if p.Description != "" {
		s += ": " + p.Description
	}
	return s
}

// wrapText breaks text into lines of at most width columns (longer words stay whole), each starting with
// indent.
func wrapText(text, indent string, width int) string {
	var sb strings.Builder
	line := indent
	for _, w := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(w) > width {
			sb.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	if len(line) > len(indent) {
		sb.WriteString(line + "\n")
	}
	return sb.String()
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// spoolStdin copies standard input to a temporary file, which an upload can send again when the server
// asks it to come back later, and returns its path; the caller removes it.
func spoolStdin(stdin io.Reader) (string, error) {
	f, err := os.CreateTemp("", "imgmill-stdin-*")
	if err != nil {
		return "", fmt.Errorf("copy standard input: %w", err)
	}
	_, err = io.Copy(f, stdin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("copy standard input: %w", err)
	}
	return f.Name(), nil
}

// stdinName is the name standard input's result is written under with --wait: stdin.imgmill.EXT.
const stdinName = "stdin"

// outputStem is the name of a result without its extension: photo.png -> photo.imgmill.
func outputStem(file string) string {
	if file == "-" {
		file = stdinName
	}
	base := filepath.Base(file)
	return strings.TrimSuffix(base, filepath.Ext(base)) + ".imgmill"
}

// outputPath is where the result of file goes in dir: photo.png -> dir/photo.imgmill.png, with the
// extension of the result's type (the input's when the type is unknown).
func outputPath(dir, file, contentType string) string {
	ext := imageop.Extension(contentType)
	if ext == "" {
		ext = filepath.Ext(file)
	}
	return filepath.Join(dir, outputStem(file)+ext)
}

// checkOutputNames refuses a batch where two inputs would write the same result.
func checkOutputNames(files []string, dir string) error {
	seen := map[string]string{}
	for _, file := range files {
		stem := outputStem(file)
		if other, ok := seen[stem]; ok {
			return fmt.Errorf("%w: %s and %s would both be written to %s.*", errUsage, other, file, filepath.Join(dir, stem))
		}
		seen[stem] = file
	}
	return nil
}

// batch is one run of submit.
type batch struct {
	c     *apiclient.Client
	e     *env
	op    string
	wait  bool
	out   string
	conc  int
	files []string
	stdin string // the file standard input was copied to, uploaded for the FILE "-"

	mu       sync.Mutex       // guards what follows and the writes to stdout and stderr
	opErr    *apiclient.Error // the server refused the op (400): the batch stops
	bar      *progressbar.ProgressBar
	terminal bool
	tasksBar bool // bar counts tasks done
	finished int  // tasks done (finished or failed), for the tasks bar
}

// item is what happened to one file.
type item struct {
	file    string
	id      string
	refused error  // the server refused the upload (an *apiclient.Error)
	notSent error  // not uploaded: the file could not be read, the server not reached, or errOpRefused
	failed  string // submitted, but did not produce a result: the task's reason, or why waiting failed
	result  string // the result's path
	// interrupted: the batch was interrupted before this file's upload ended, or (with an id) before its
	// task was done; the task keeps running on the server.
	interrupted bool
}

// path is the file to upload: standard input's copy for "-".
func (b *batch) path(it *item) string {
	if it.file == "-" {
		return b.stdin
	}
	return it.file
}

func (b *batch) run(ctx context.Context) error {
	start := time.Now()
	items := make([]item, len(b.files))
	var total int64
	for i, file := range b.files {
		items[i].file = file
		if fi, err := os.Stat(b.path(&items[i])); err == nil {
			total += fi.Size()
		}
	}
	b.terminal = isTerminal(b.e.stderr)
	if b.terminal {
		b.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(b.e.stderr), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("uploading"), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
	}

	uploads := make(chan int)
	waits := make(chan int, len(items))
	var upWG, waitWG sync.WaitGroup
	for range b.conc {
		upWG.Go(func() {
			for i := range uploads {
				b.upload(ctx, &items[i])
				if b.wait && items[i].id != "" {
					waits <- i
				} else if b.wait {
					b.taskDone(&items[i])
				}
			}
		})
		if b.wait {
			waitWG.Go(func() {
				for i := range waits {
					b.await(ctx, &items[i])
					b.taskDone(&items[i])
				}
			})
		}
	}
	for i := range items {
		uploads <- i
	}
	close(uploads)
	upWG.Wait()
	close(waits)
	if b.wait {
		b.startTasksBar(len(items))
	}
	waitWG.Wait()
	b.finishBar()
	return b.report(ctx, items, time.Since(start))
}

// errOpRefused marks a file not uploaded because the server had refused the op.
var errOpRefused = errors.New("the server refused the op")

// upload submits one file. A 400 is the server refusing the op, which it would for every file: the
// batch stops uploading.
func (b *batch) upload(ctx context.Context, it *item) {
	b.mu.Lock()
	stopped := b.opErr != nil
	b.mu.Unlock()
	switch {
	case stopped:
		it.notSent = errOpRefused
		return
	case ctx.Err() != nil:
		it.interrupted = true
		return
	}
	name := filepath.Base(it.file) // downloads are named after it, on the page too
	if it.file == "-" {
		name = ""
	}
	id, err := b.c.Upload(ctx, b.path(it), name, b.op, b.addBytes, func(wait time.Duration, err error) {
		b.plainf("%s: %s, retrying in %s\n", it.file, outageReason(err, b.c.Base()), wait.Round(100*time.Millisecond))
	})
	var ae *apiclient.Error
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// Whether the server made the task is unknown: the answer was not awaited.
		it.interrupted = true
		return
	case errors.As(err, &ae):
		it.refused = ae
		if ae.Status == http.StatusBadRequest {
			b.mu.Lock()
			if b.opErr == nil {
				b.opErr = ae
			}
			b.mu.Unlock()
		}
		return
	default:
		it.notSent = err
		return
	}
	it.id = id
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.wait {
		fmt.Fprintf(b.e.stdout, "%s\t%s\n", it.file, id)
	} else if !b.terminal {
		fmt.Fprintf(b.e.stderr, "%s: submitted as task %s\n", it.file, id)
	}
}

// await waits for one task and downloads its result.
func (b *batch) await(ctx context.Context, it *item) {
	st, err := b.c.WaitTask(ctx, it.id)
	switch {
	case ctx.Err() != nil:
		it.interrupted = true
		return
	case err != nil:
		it.failed = err.Error()
		return
	case st.State == wire.FailedWord:
		it.failed = st.Error
		if it.failed == "" {
			it.failed = "failed without a reason"
		}
		return
	case st.State == wire.CancelledWord:
		it.failed = "cancelled"
		return
	}
	path, err := b.c.Download(ctx, it.id, nil, func(ct string) string { return outputPath(b.out, it.file, ct) })
	switch {
	case ctx.Err() != nil:
		// Finished on the server: only the download was cut short, and imgmill get can do it again.
		it.interrupted = true
	case err != nil:
		it.failed = err.Error()
	default:
		it.result = path
	}
}

// problem is what went wrong with the file, "" when nothing did (or the batch was interrupted).
func (b *batch) problem(it *item) string {
	switch {
	case it.refused != nil:
		return "refused at upload: " + it.refused.Error()
	case it.notSent != nil:
		return "not sent: " + notSentReason(it.notSent, b.c.Base())
	case it.failed != "":
		return "task failed: " + it.failed
	}
	return ""
}

// resultLine is the line --wait prints on stdout for a file once it is done: FILE, the task's id ("-"
// when none) and the result's path or what went wrong, separated by tabs. Nothing here has a tab or a
// newline but a file name that has one.
func (b *batch) resultLine(it *item) string {
	id, what := it.id, it.result
	if id == "" {
		id = "-"
	}
	switch {
	case it.interrupted && it.id != "":
		what = "interrupted: the task keeps running on the server"
	case it.interrupted:
		what = "not sent: interrupted"
	case what == "":
		what = b.problem(it)
	}
	return it.file + "\t" + id + "\t" + strings.NewReplacer("\t", " ", "\n", " ").Replace(what)
}

// notSentReason says why a file was not sent: the file could not be read, or the server could not be
// reached (for a refused connection, whether imgmill runs there).
func notSentReason(err error, server string) string {
	var pe *fs.PathError
	var dns *net.DNSError
	var ue *url.Error
	switch {
	case errors.Is(err, errOpRefused):
		return err.Error()
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused: is imgmill serve running at %s?", server)
	case errors.As(err, &dns):
		return fmt.Sprintf("cannot resolve %s: %s", dns.Name, dns.Err)
	case errors.As(err, &ue):
		return fmt.Sprintf("cannot reach %s: %v", server, ue.Err)
	case errors.As(err, &pe):
		return fmt.Sprintf("cannot read it: %v", pe.Err)
	}
	return err.Error()
}

// outageReason is why an upload waits for the server: its answer, or why it could not be reached.
func outageReason(err error, server string) string {
	var ae *apiclient.Error
	if errors.As(err, &ae) {
		return fmt.Sprintf("server busy or unavailable (%v)", ae)
	}
	return "server unavailable (" + notSentReason(err, server) + ")"
}

// interruptedError is a batch stopped by Ctrl-C (or SIGTERM): exit status 130, and the tasks it leaves
// running on the server named, so that they can be fetched later.
type interruptedError struct {
	running []string // ids of tasks uploaded and not known to be done
	notSent int      // files whose upload did not end
}

func (e *interruptedError) Error() string {
	s := fmt.Sprintf("interrupted: %d %s on the server", len(e.running), plural(len(e.running), "task keeps running", "tasks keep running"))
	if len(e.running) > 0 {
		s += ": " + strings.Join(e.running, " ")
	}
	if e.notSent > 0 {
		s += fmt.Sprintf("; %d %s not sent", e.notSent, plural(e.notSent, "file", "files"))
	}
	if len(e.running) > 0 {
		s += " (imgmill get --wait ID -o FILE fetches a result)"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// report prints the summary and every failure, and returns an error when any file failed: an
// *opRefusedError (exit 2) when the server refused the op, an *interruptedError (exit 130) when ctx
// ended first.
func (b *batch) report(ctx context.Context, items []item, took time.Duration) error {
	if b.opErr != nil {
		for i := range items {
			if p := b.problem(&items[i]); p != "" && !errors.Is(items[i].notSent, errOpRefused) && apiclient.StatusOf(items[i].refused) != http.StatusBadRequest {
				fmt.Fprintf(b.e.stderr, "%s: %s\n", items[i].file, p)
			}
		}
		e := &opRefusedError{op: b.op, server: b.c.Base(), err: b.opErr}
		if strings.Contains(b.opErr.Msg, "unknown operation") {
			if ops, err := b.c.Operations(ctx); err == nil {
				e.catalogue = listOperations(b.c.Base(), ops)
			}
		}
		return e
	}
	var failed, refused, notSent, finished int
	var intr interruptedError
	for i := range items {
		it := &items[i]
		switch {
		case it.interrupted && it.id != "":
			intr.running = append(intr.running, it.id)
		case it.interrupted:
			intr.notSent++
		case it.refused != nil:
			refused++
		case it.notSent != nil:
			notSent++
		case it.failed != "":
			failed++
		case it.result != "":
			finished++
		}
		if !it.interrupted {
			if p := b.problem(it); p != "" {
				fmt.Fprintf(b.e.stderr, "%s: %s\n", it.file, p)
			}
		}
	}
	if intr.notSent > 0 || len(intr.running) > 0 {
		if !b.wait {
			// Without --wait every task uploaded keeps running; their ids are on stdout already.
			intr.running = nil
			for _, it := range items {
				if it.id != "" {
					intr.running = append(intr.running, it.id)
				}
			}
		}
		return &intr
	}
	if b.wait {
		line := fmt.Sprintf("%d submitted, %d finished, %d failed", len(items), finished, failed+refused+notSent)
		if refused > 0 {
			line += fmt.Sprintf(" (%d refused at upload)", refused)
		}
		if notSent > 0 {
			line += fmt.Sprintf(" (%d not sent)", notSent)
		}
		fmt.Fprintf(b.e.stderr, "%s in %.1fs\n", line, took.Seconds())
	}
	if n := failed + refused + notSent; n > 0 {
		return fmt.Errorf("%d of %d files failed", n, len(items))
	}
	return nil
}

// Progress: a bar on a terminal (bytes uploaded, then tasks done), plain lines otherwise.

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (b *batch) addBytes(n int64) {
	if b.bar != nil {
		b.bar.Add64(n) // the bar has its own lock
	}
}

// taskDone counts a file done and, with --wait, prints its line on stdout (none for the files not sent
// because the server refused the op: the error says it for all).
func (b *batch) taskDone(it *item) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.opErr == nil || it.id != "" {
		fmt.Fprintln(b.e.stdout, b.resultLine(it))
	}
	b.finished++
	if b.tasksBar {
		b.bar.Add(1)
	}
}

// startTasksBar replaces the bytes bar, once every file is uploaded, by a bar of the tasks done.
func (b *batch) startTasksBar(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar == nil {
		return
	}
	b.bar.Finish()
	b.bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(b.e.stderr), progressbar.OptionSetDescription("processing"),
		progressbar.OptionSetWidth(30), progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
	b.bar.Set(b.finished)
	b.tasksBar = true
}

func (b *batch) finishBar() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar != nil {
		b.bar.Finish()
		fmt.Fprintln(b.e.stderr)
	}
}

// plainf writes a progress line to stderr when there is no bar.
func (b *batch) plainf(format string, args ...any) {
	if b.terminal {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(b.e.stderr, format, args...)
}

func statusCommand() command {
	return command{name: "status", summary: "print the status of a task", positional: true,
		about:  "Prints the status of task ID as JSON; exits 1 when the task failed or is unknown.\nUsage: imgmill status [flags] ID",
		define: defineStatus}
}

func defineStatus(f *flags) runner {
	e := f.env
	server := f.server()
	return func(ctx context.Context, pos []string) error {
		if len(pos) != 1 {
			return fmt.Errorf("%w: want exactly one task ID (imgmill status [flags] ID)", errUsage)
		}
		c, err := newAPIClient(*server)
		if err != nil {
			return err
		}
		defer c.Close()
		c.OnOutage = tellRetry(e)
		st, raw, err := c.Status(ctx, pos[0])
		if err != nil {
			return err
		}
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, raw, "", "  "); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, pretty.String())
		if st.State == wire.FailedWord {
			return fmt.Errorf("task %s failed: %s", pos[0], st.Error)
		}
		return nil

	}
}

func deleteCommand() command {
	return command{name: "delete", summary: "delete tasks: their images and their records", positional: true,
		about: "Deletes each task ID (a task being processed is cancelled first): its upload, its result and its\n" +
			"record are gone when it answers. Deleting a deleted task again succeeds. Prints \"ID<tab>deleted\" per\n" +
			"task; exits 1 when any ID could not be deleted.\nUsage: imgmill delete [flags] ID...",
		define: defineDelete}
}

func defineDelete(f *flags) runner {
	e := f.env
	server := f.server()
	return func(ctx context.Context, pos []string) error {
		return eachTask(ctx, e, *server, pos, "imgmill delete [flags] ID...", func(c *apiclient.Client, id string) error {
			if err := c.Delete(ctx, id); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\tdeleted\n", id)
			return nil
		})
	}
}

func cancelCommand() command {
	return command{name: "cancel", summary: "cancel tasks that have not finished", positional: true,
		about: "Cancels each task ID: a queued task never starts, a processing one stops. Cancelling a cancelled\n" +
			"task again succeeds; a finished or failed one is an error. Prints \"ID<tab>STATE\" per task; exits 1\n" +
			"when any ID could not be cancelled.\nUsage: imgmill cancel [flags] ID...",
		define: defineCancel}
}

func defineCancel(f *flags) runner {
	e := f.env
	server := f.server()
	return func(ctx context.Context, pos []string) error {
		return eachTask(ctx, e, *server, pos, "imgmill cancel [flags] ID...", func(c *apiclient.Client, id string) error {
			st, err := c.Cancel(ctx, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", id, st.State)
			return nil
		})
	}
}

func retryCommand() command {
	return command{name: "retry", summary: "queue failed or cancelled tasks again", positional: true,
		about: "Queues each task ID, failed or cancelled, again with the image it was uploaded with and a full set\n" +
			"of attempts. A task in another state, or whose upload is gone (upload it again), is an error. Prints\n" +
			"\"ID<tab>STATE\" per task; exits 1 when any ID could not be retried.\nUsage: imgmill retry [flags] ID...",
		define: defineRetry}
}

func defineRetry(f *flags) runner {
	e := f.env
	server := f.server()
	return func(ctx context.Context, pos []string) error {
		return eachTask(ctx, e, *server, pos, "imgmill retry [flags] ID...", func(c *apiclient.Client, id string) error {
			st, err := c.Retry(ctx, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s\t%s\n", id, st.State)
			return nil
		})
	}
}

// eachTask runs do for every task id in ids, in order, telling each failure on stderr and going on with
// the others; it fails when any failed.
func eachTask(ctx context.Context, e *env, server string, ids []string, usage string,
	do func(c *apiclient.Client, id string) error,
) error {
	if len(ids) == 0 {
		return fmt.Errorf("%w: want at least one task ID (%s)", errUsage, usage)
	}
	c, err := newAPIClient(server)
	if err != nil {
		return err
	}
	defer c.Close()
	c.OnOutage = tellRetry(e)
	failed := 0
	for _, id := range ids {
		if err := do(c, id); err != nil {
			if ctx.Err() != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "imgmill: %s: %v\n", id, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d tasks failed", failed, len(ids))
	}
	return nil
}

// tellRetry tells the user of a one-shot command that it waits for the server.
func tellRetry(e *env) func(time.Duration, error) {
	return func(wait time.Duration, err error) {
		fmt.Fprintf(e.stderr, "imgmill: server unavailable (%v), retrying in %s\n", err, wait.Round(100*time.Millisecond))
	}
}

func getCommand() command {
	return command{name: "get", summary: "download the result of a task", positional: true,
		about:  "Downloads the result of task ID into FILE (\"-\": standard output).\nUsage: imgmill get [flags] ID -o FILE",
		define: defineGet}
}

func defineGet(f *flags) runner {
	e := f.env
	server := f.server()
	out := f.String("o", "", "the file to write the result to (\"-\": standard output); required")
	wait := f.wait()
	return func(ctx context.Context, pos []string) error {
		switch {
		case len(pos) != 1:
			return fmt.Errorf("%w: want exactly one task ID (imgmill get [flags] ID -o FILE)", errUsage)
		case *out == "":
			return fmt.Errorf("%w: -o FILE is required", errUsage)
		}
		id := pos[0]
		c, err := newAPIClient(*server)
		if err != nil {
			return err
		}
		defer c.Close()
		c.OnOutage = tellRetry(e)
		if *wait {
			st, err := c.WaitTask(ctx, id)
			if err != nil {
				return err
			}
			switch st.State {
			case wire.FailedWord:
				return fmt.Errorf("task %s failed: %s", id, st.Error)
			case wire.CancelledWord:
				return fmt.Errorf("task %s was cancelled", id)
			}
		}
		_, err = c.Download(ctx, id, e.stdout, func(string) string { return *out })
		if apiclient.StatusOf(err) == 404 {
			// Say why: unknown, failed, or not finished yet.
			st, _, serr := c.Status(ctx, id)
			switch {
			case serr != nil:
				return serr
			case st.State == wire.FailedWord:
				return fmt.Errorf("task %s failed: %s", id, st.Error)
			case st.State == wire.CancelledWord:
				return fmt.Errorf("task %s was cancelled", id)
			case st.State != wire.FinishedWord:
				return fmt.Errorf("task %s is not finished yet (%s); use --wait to wait for it", id, st.State)
			}
		}
		return err

	}
}
