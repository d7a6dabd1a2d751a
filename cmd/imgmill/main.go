// Command imgmill is the whole app in one binary: a subcommand per service, `serve` for all of them in one
// process, and `bench`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgmill: %v\n", err)
		os.Exit(exitCode(err))
	}
}
