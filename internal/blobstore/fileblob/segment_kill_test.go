package fileblob

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
)

// TestSegmentedKill9: a child process Puts small blobs from 8 goroutines (fenced, overwriting, some
// deleted right after) into small segments, so that segments roll over and the compactor runs, and prints
// each Put and Delete once it returned; the test kills it with SIGKILL mid-stream, reopens the store and
// checks that every acknowledged blob is there, whole, with its fence or a newer one's, and that no
// acknowledged Delete was undone. It does not cut power, so it checks the append, index, compaction and
// scan logic, not the disk's flush.
func TestSegmentedKill9(t *testing.T) {
	if dir := os.Getenv("FILEBLOB_KILL_CHILD"); dir != "" {
		killChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSegmentedKill9$")
	cmd.Env = append(os.Environ(), "FILEBLOB_KILL_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// key -> the data tag of the newest acknowledged Put; "-" once deleted after it, "?" and the tag while
	// a Delete is under way.
	acked := map[string]string{}
	fences := map[string]int64{}
	var compactions int64
	sc := bufio.NewScanner(out)
	// After 8000 lines the child is killed, and the lines it wrote before it died are read too: each is
	// one write to the pipe, so whole.
	for lines := 0; sc.Scan(); lines++ {
		if lines == 8000 {
			cmd.Process.Kill()
		}
		var key, data string
		var fence int64
		if _, err := fmt.Sscan(sc.Text(), &key, &fence, &data); err != nil {
			continue
		}
		if key == "compactions" {
			compactions = fence
			continue
		}
		if fence >= fences[key] {
			acked[key], fences[key] = data, fence
		}
	}
	cmd.Wait()
	if len(acked) < 100 {
		t.Fatalf("the child acknowledged only %d keys", len(acked))
	}
	s := openSegmented(t, dir)
	defer s.Close()
	if compactions == 0 {
		t.Fatal("the child's store compacted nothing before it was killed")
	}
	for key, data := range acked {
		b, err := s.Open(context.Background(), key)
		if data == "-" {
			// Deleted: gone, or written again by a Put that had not returned.
			if err == nil {
				if b.Fence <= fences[key] {
					t.Fatalf("deleted %s came back with fence %d", key, b.Fence)
				}
				b.Close()
			}
			continue
		}
		if deleting, ok := strings.CutPrefix(data, "?"); ok {
			if errors.Is(err, blobstore.ErrNotFound) {
				continue
			}
			data = deleting
		}
		if err != nil {
			t.Fatalf("acknowledged %s lost: %v", key, err)
		}
		got, err := io.ReadAll(b)
		b.Close()
		if err != nil || b.Fence < fences[key] || (b.Fence == fences[key] && string(got) != blobData(data)) {
			t.Fatalf("%s: fence %d, %d bytes (%v); acknowledged fence %d", key, b.Fence, len(got), err, fences[key])
		}
	}
	t.Logf("%d acknowledged keys (8000 Puts and Deletes, %d compactions) checked after SIGKILL", len(acked), compactions)
}

func blobData(tag string) string { return strings.Repeat(tag, 1000) }

func killChild(dir string) {
	s, err := OpenWith(dir, Options{SmallMax: 64 << 10, SegmentSize: 256 << 10})
	if err != nil {
		panic(err)
	}
	var mu sync.Mutex
	go func() {
		for range time.Tick(20 * time.Millisecond) {
			mu.Lock()
			fmt.Printf("compactions %d -\n", s.SegmentStats().Compactions)
			mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				key := fmt.Sprintf("k/%d/%d", g, i%300) // one writer per key, overwriting after 300
				fence := int64(i + 1)
				tag := fmt.Sprintf("g%di%d.", g, i)
				data := blobData(tag)
				if _, err := s.Put(context.Background(), key, strings.NewReader(data), int64(len(data)), fence); err != nil {
					panic(err)
				}
				mu.Lock()
				fmt.Printf("%s %d %s\n", key, fence, tag)
				mu.Unlock()
				if i%3 == 0 {
					mu.Lock()
					fmt.Printf("%s %d ?%s\n", key, fence, tag) // a Delete under way: it may or may not happen
					mu.Unlock()
					if err := s.Delete(context.Background(), key); err != nil {
						panic(err)
					}
					mu.Lock()
					fmt.Printf("%s %d -\n", key, fence)
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
}
