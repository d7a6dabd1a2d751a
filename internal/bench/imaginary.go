package bench

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// maxImaginaryAnswer bounds one answer read from the libvips server: far above any PNG of the sizes the
// bench makes, so only a server gone wrong reaches it.
const maxImaginaryAnswer = 256 << 20

// imaginaryEndpoint is the synchronous conversion URL of the imaginary server at base (a URL, or
// host:port for http), keeping any path prefix it was started with (-path-prefix).
func imaginaryEndpoint(base string) (string, error) {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--compare-imaginary: not an http(s) URL or host:port: %q", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/convert"
	u.RawQuery = "type=png"
	return u.String(), nil
}

// runImaginary posts every image to the libvips server's synchronous conversion with the given number of
// clients, each sending one image and reading its answer before taking the next, as the pipeline's
// clients do, and returns the throughput. The answers are kept and checked after the clock stops (each
// must decode as a PNG of size×size), so the check does not take CPU from the server while it is timed.
func runImaginary(ctx context.Context, base string, encoded [][]byte, size, clients int) (Throughput, error) {
	endpoint, err := imaginaryEndpoint(base)
	if err != nil {
		return Throughput{}, err
	}
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	answers := make([][]byte, len(encoded))
	start := time.Now()
	err = eachImage(ctx, clients, len(encoded), func(ctx context.Context, i int) error {
		answer, err := convert(ctx, hc, endpoint, encoded[i])
		if err != nil {
			return fmt.Errorf("image %d: %w", i, err)
		}
		answers[i] = answer
		return nil
	})
	elapsed := time.Since(start)
	if err != nil {
		return Throughput{}, err
	}
	if err := checkAnswers(ctx, answers, size); err != nil {
		return Throughput{}, err
	}
	return Throughput{Images: len(encoded), Elapsed: elapsed}, nil
}

// convert sends one PNG and returns the server's answer, which must be a 200.
func convert(ctx context.Context, hc *http.Client, endpoint string, img []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(img))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "image/png")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxImaginaryAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("answered %s: %.200s", resp.Status, body)
	}
	if len(body) > maxImaginaryAnswer {
		return nil, fmt.Errorf("answer larger than %d bytes", maxImaginaryAnswer)
	}
	return body, nil
}

// checkAnswers decodes every answer on all cores and checks it is a PNG of size×size.
func checkAnswers(ctx context.Context, answers [][]byte, size int) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for i, answer := range answers {
		g.Go(func() error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			img, err := png.Decode(bytes.NewReader(answer))
			if err != nil {
				return fmt.Errorf("image %d: the answer is not a PNG: %w", i, err)
			}
			if b := img.Bounds(); b.Dx() != size || b.Dy() != size {
				return fmt.Errorf("image %d: the answer is %dx%d, want %dx%d", i, b.Dx(), b.Dy(), size, size)
			}
			return nil
		})
	}
	return g.Wait()
}
