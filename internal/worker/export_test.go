package worker

import (
	"context"
	"io"

	"github.com/imgmill/imgmill/internal/imageop"
)

// SetApply makes the worker run f for the image work instead of the Processor's ApplyContext.
func SetApply(cfg *Config, f func(ctx context.Context, dst io.Writer, src io.Reader, chain imageop.Chain) (string, error)) {
	cfg.apply = f
}
