package enginetest

import (
	"context"
	"errors"
	"testing"

	"github.com/imgmill/imgmill/internal/fault"
)

// Class is what a store's classifier must make of an error of its engine.
type Class int

const (
	// Permanent: the request itself is wrong; retrying it changes nothing.
	Permanent Class = iota
	// Away: the engine is away for now (fault.IsTransient, not fault.IsNoSpace).
	Away
	// Full: the engine is out of space (fault.IsNoSpace).
	Full
)

// ClassifyCase is an error of an engine, and what its store's classifier must make of it.
type ClassifyCase struct {
	Name string
	Err  error
	Want Class
}

// CheckClassify checks a store's classify(ctx, err): each case comes out as its Want class with its cause
// kept (errors.Is), nil stays nil, and when the caller's ctx has ended, each of unchanged comes back as it
// was, whatever it is (the caller gave up; nothing is away).
func CheckClassify(t *testing.T, classify func(context.Context, error) error, cases []ClassifyCase, unchanged []error) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			got := classify(context.Background(), tc.Err)
			switch {
			case !errors.Is(got, tc.Err):
				t.Errorf("classify(%v) = %v, which lost the cause", tc.Err, got)
			case tc.Want == Permanent && fault.IsTransient(got):
				t.Errorf("classify(%v) = %v, want it permanent", tc.Err, got)
			case tc.Want == Away && (!fault.IsTransient(got) || fault.IsNoSpace(got)):
				t.Errorf("classify(%v) = %v, want it unavailable", tc.Err, got)
			case tc.Want == Full && !fault.IsNoSpace(got):
				t.Errorf("classify(%v) = %v, want it out of space", tc.Err, got)
			}
		})
	}
	if classify(context.Background(), nil) != nil {
		t.Error("classify(nil) != nil")
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	for _, err := range unchanged {
		if got := classify(ended, err); got != err {
			t.Errorf("classify with the caller's context ended (%v) = %v, want it unchanged", err, got)
		}
	}
}
