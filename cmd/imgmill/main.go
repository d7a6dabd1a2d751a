// Command imgmill is the whole app in one binary: a subcommand per service, `serve` for all of them in one
// process, `bench`, and the client commands (see internal/cli).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/imgmill/imgmill/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.RunIO(ctx, os.Args, os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgmill: %v\n", err)
		os.Exit(cli.ExitCode(err))
	}
}
