package mixes

import (
	"bytes"
	"context"
	"fmt"
	"image"
	_ "image/png" // results are PNG
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/referencetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

const (
	// images go through the master per mix, uploading at once; each of imageSize px square.
	images    = 40
	imageSize = 64
	uploaders = 4
	// quiet is how long a mix may go without finishing a task before the ones left are counted lost:
	// far longer than a task takes (milliseconds), and than imgmill's retries of a missing working
	// image, shorter than a claim's lease (2 min), which the reference has none of.
	quiet = 30 * time.Second
	// mixTimeout caps a mix's run.
	mixTimeout = 4 * time.Minute
	// pollEvery is how often a client asks /isReady, as a reference client polls.
	pollEvery = 100 * time.Millisecond
)

// outcome is what became of a mix's uploads.
type outcome struct {
	acknowledged int      // /new answered an id
	refused      []string // /new answered anything else (not counting 503/507 asked again)
	finished     int      // acknowledged, finished, the right pixels
	wrong        []string // finished with other pixels, or a result that is no image
	lost         []int64  // acknowledged, never finished
	// race are the lost tasks the reference worker claimed from the reference master before their
	// image was stored, and dropped: the reference's own loss, which no imgmill service is in the path of.
	race []int64
	form error // the upload through the frontend's form: nil when it finished right
}

// mix is a stack to test, named.
type mix struct {
	name  string
	kinds kinds
}

// TestMixes runs imgmill mixed with the reference design, one service swapped at a time both ways:
// each mix takes 40 images through the master (/new, /isReady, /get, the API both masters share) and one
// through the frontend's form (/submitTask, /isReady, /getImage), and every acknowledged upload must
// finish with its red and green swapped. The reference's stand-ins alone are the baseline: they lose
// tasks to the reference's own race (its worker claims a task before its master has stored the image,
// and drops it). Where both of those are in a mix, such a loss is reported as the reference's; any other
// loss fails the mix.
func TestMixes(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED: the mixes run a load through 14 deployments; not with -short")
	}
	var reference outcome
	t.Run("reference", func(t *testing.T) {
		reference = runMix(t, kinds{true, true, true, true, true, true})
		t.Logf("the reference alone: %d acknowledged, %d finished right, %d lost to its race %v, form: %v",
			reference.acknowledged, reference.finished, len(reference.race), reference.race, reference.form)
		if len(reference.refused) > 0 || len(reference.wrong) > 0 || len(reference.lost) > 0 || reference.finished == 0 {
			t.Errorf("the stand-ins alone: refused %q, wrong %q, lost otherwise %v, %d finished",
				reference.refused, reference.wrong, reference.lost, reference.finished)
		}
	})
	mixes := []mix{{"imgmill", kinds{}}}
	for i, name := range serviceNames {
		var k kinds
		k[i] = true
		mixes = append(mixes, mix{"imgmill_with_reference_" + name, k})
	}
	for i, name := range serviceNames {
		k := kinds{true, true, true, true, true, true}
		k[i] = false
		mixes = append(mixes, mix{"reference_with_imgmill_" + name, k})
	}
	t.Run("mix", func(t *testing.T) {
		for _, m := range mixes {
			t.Run(m.name, func(t *testing.T) {
				t.Parallel()
				o := runMix(t, m.kinds)
				t.Logf("%v: %d acknowledged, %d finished right, %d lost, %d to the reference's own race (the reference alone: %d)",
					m.kinds, o.acknowledged, o.finished, len(o.lost), len(o.race), len(reference.race))
				if len(o.refused) > 0 {
					t.Errorf("%d of %d uploads refused: %q", len(o.refused), images, o.refused)
				}
				if len(o.wrong) > 0 {
					t.Errorf("%d results wrong: %q", len(o.wrong), o.wrong)
				}
				if len(o.lost) > 0 {
					t.Errorf("%d acknowledged uploads never finished (%v; nothing finished for %v), the reference alone lost %d, all to its race",
						len(o.lost), o.lost, quiet, len(reference.race))
				}
				if o.form != nil {
					t.Errorf("the upload through the frontend's form: %v", o.form)
				}
			})
		}
	})
}

// runMix starts a stack of k and sends its load.
func runMix(t *testing.T, k kinds) outcome {
	s := startStack(t, k)
	ctx, cancel := deploytest.Within(t, mixTimeout)
	defer cancel()
	hc := &http.Client{Timeout: time.Minute, Transport: http.DefaultTransport.(*http.Transport).Clone()}
	t.Cleanup(hc.CloseIdleConnections)
	c := refClient{hc: hc, master: "http://" + s.masterAddr, frontend: "http://" + s.frontendAddr}

	var o outcome
	origs := make(map[int64]image.Image)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	for range uploaders {
		wg.Go(func() {
			for i := range next {
				orig := testimage.Pattern(imageSize, int64(i))
				data, err := testimage.EncodePNG(orig)
				if err != nil {
					panic(err) // an in-memory PNG
				}
				id, err := c.upload(ctx, data)
				mu.Lock()
				if err != nil {
					o.refused = append(o.refused, fmt.Sprintf("image %d: %v", i, err))
				} else {
					o.acknowledged++
					origs[id] = orig
				}
				mu.Unlock()
			}
		})
	}
	for i := range images {
		next <- i
	}
	close(next)

	formDone := make(chan error, 1)
	go func() { formDone <- c.throughForm(ctx) }()
	wg.Wait()

	// Wait for the acknowledged ones; the clock of quiet restarts with every task finished.
	progress := time.Now()
	for len(origs) > 0 && time.Since(progress) < quiet && ctx.Err() == nil {
		for id, orig := range origs {
			ready, err := c.isReady(ctx, c.master, id)
			if err != nil || !ready {
				continue
			}
			if err := c.checkResult(ctx, c.master+"/get", id, orig); err != nil {
				o.wrong = append(o.wrong, fmt.Sprintf("task %d: %v", id, err))
			} else {
				o.finished++
			}
			delete(origs, id)
			progress = time.Now()
		}
		sleep(ctx, pollEvery)
	}
	var dropped map[int64]bool
	if k[ma] && s.refWorker != nil {
		dropped = make(map[int64]bool)
		for _, id := range s.refWorker.Dropped() {
			dropped[id] = true
		}
	}
	for id := range origs {
		if dropped[id] {
			o.race = append(o.race, id)
		} else {
			o.lost = append(o.lost, id)
		}
	}
	o.form = <-formDone
	return o
}

// refClient is a client of the reference design: plain HTTP, nothing imgmill adds.
type refClient struct {
	hc               *http.Client
	master, frontend string // http://host:port
}

// do sends a request and reads the whole answer.
func (c refClient) do(ctx context.Context, method, u, contentType string, body []byte) (int, []byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header, err
}

// post sends an upload until it is answered other than 503 or 507 (transient: asked again after
// Retry-After, at most a second here, for as long as quiet) and returns the id it was given.
func (c refClient) post(ctx context.Context, u, contentType string, body []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, quiet)
	defer cancel()
	for {
		status, reply, header, err := c.do(ctx, http.MethodPost, u, contentType, body)
		switch {
		case err != nil:
			return "", err
		case status == http.StatusServiceUnavailable || status == http.StatusInsufficientStorage:
			if header.Get("Retry-After") == "" {
				return "", fmt.Errorf("%d without Retry-After: %s", status, trim(reply))
			}
			if !sleep(ctx, time.Second) {
				return "", fmt.Errorf("%d for %v: %s", status, quiet, trim(reply))
			}
		case status != http.StatusOK:
			return "", fmt.Errorf("%d %s", status, trim(reply))
		default:
			return strings.TrimSpace(string(reply)), nil
		}
	}
}

// upload sends an image to the master's /new and returns its id.
func (c refClient) upload(ctx context.Context, img []byte) (int64, error) {
	reply, err := c.post(ctx, c.master+"/new", "image/png", img)
	if err != nil {
		return 0, fmt.Errorf("POST /new: %w", err)
	}
	id, err := strconv.ParseInt(reply, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("POST /new answered %q, not an id", reply)
	}
	return id, nil
}

// isReady asks base's /isReady whether task id is finished: the master answers 1, the frontend
// referencetest.Ready.
func (c refClient) isReady(ctx context.Context, base string, id any) (bool, error) {
	status, reply, _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("%s/isReady?id=%s", base, url.QueryEscape(fmt.Sprint(id))), "", nil)
	if err != nil {
		return false, err
	}
	if status != http.StatusOK {
		return false, fmt.Errorf("GET /isReady: %d %s", status, trim(reply))
	}
	return string(reply) == "1" || string(reply) == referencetest.Ready, nil
}

// checkResult downloads task id's result from u and checks that it is orig with red and green swapped.
func (c refClient) checkResult(ctx context.Context, u string, id any, orig image.Image) error {
	status, reply, _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("%s?id=%s", u, url.QueryEscape(fmt.Sprint(id))), "", nil)
	if err != nil {
		return err
	}
	result, _, err := image.Decode(bytes.NewReader(reply))
	if err != nil {
		return fmt.Errorf("result: %d %s: %w", status, trim(reply), err)
	}
	return testimage.CheckSwapped(orig, result)
}

// throughForm uploads one image through the frontend's form, as a browser posts it, and waits for its
// result there.
func (c refClient) throughForm(ctx context.Context) error {
	orig := testimage.Pattern(imageSize, 1000)
	data, err := testimage.EncodePNG(orig)
	if err != nil {
		return err
	}
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, err := mw.CreateFormFile("uploadfile", "form.png")
	if err != nil {
		return err
	}
	fw.Write(data)
	mw.Close()
	id, err := c.post(ctx, c.frontend+"/submitTask", mw.FormDataContentType(), form.Bytes())
	if err != nil {
		return fmt.Errorf("POST /submitTask: %w", err)
	}
	progress := time.Now()
	for {
		ready, err := c.isReady(ctx, c.frontend, id)
		if err == nil && ready {
			return c.checkResult(ctx, c.frontend+"/getImage", id, orig)
		}
		if time.Since(progress) > quiet || !sleep(ctx, pollEvery) {
			return fmt.Errorf("task %s not finished (last /isReady: %v, %v)", id, ready, err)
		}
	}
}
