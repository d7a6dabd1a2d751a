package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/kvstore"
)

func TestClassify(t *testing.T) {
	enginetest.CheckClassify(t, classify, []enginetest.ClassifyCase{
		{Name: "no leader", Err: rpctypes.ErrNoLeader, Want: enginetest.Away},
		{Name: "leader changed", Err: rpctypes.ErrLeaderChanged, Want: enginetest.Away},
		{Name: "request timed out", Err: rpctypes.ErrTimeout, Want: enginetest.Away},
		{Name: "timed out, leader failed", Err: rpctypes.ErrTimeoutDueToLeaderFail, Want: enginetest.Away},
		{Name: "timed out, connection lost", Err: rpctypes.ErrTimeoutDueToConnectionLost, Want: enginetest.Away},
		{Name: "timed out waiting for the applied index", Err: rpctypes.ErrTimeoutWaitAppliedIndex, Want: enginetest.Away},
		{Name: "server stopped", Err: rpctypes.ErrStopped, Want: enginetest.Away},
		{Name: "unhealthy cluster", Err: rpctypes.ErrUnhealthy, Want: enginetest.Away},
		{Name: "too many requests", Err: rpctypes.ErrTooManyRequests, Want: enginetest.Away},
		{Name: "not capable", Err: rpctypes.ErrNotCapable, Want: enginetest.Away},
		{Name: "not leader", Err: rpctypes.ErrNotLeader, Want: enginetest.Away},
		{Name: "no leader, as gRPC sends it", Err: rpctypes.ErrGRPCNoLeader, Want: enginetest.Away},
		{Name: "wrapped", Err: fmt.Errorf("grant a 2s lease: %w", rpctypes.ErrNoLeader), Want: enginetest.Away},
		{Name: "database space exceeded", Err: rpctypes.ErrNoSpace, Want: enginetest.Full},
		{Name: "database space exceeded, as gRPC sends it", Err: rpctypes.ErrGRPCNoSpace, Want: enginetest.Full},
		{Name: "no connection", Err: status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\""), Want: enginetest.Away},
		{Name: "no address", Err: status.Error(codes.Unavailable, "there is no address available"), Want: enginetest.Away},
		{Name: "resource exhausted", Err: status.Error(codes.ResourceExhausted, "grpc: server overloaded"), Want: enginetest.Away},
		{Name: "a deadline of ours", Err: context.DeadlineExceeded, Want: enginetest.Away},
		{Name: "a deadline of ours, run out in the server", Err: status.Error(codes.Unknown, "context deadline exceeded"), Want: enginetest.Away},
		{Name: "compacted", Err: rpctypes.ErrCompacted, Want: enginetest.Permanent},
		{Name: "permission denied", Err: rpctypes.ErrPermissionDenied, Want: enginetest.Permanent},
		{Name: "authentication failed", Err: rpctypes.ErrAuthFailed, Want: enginetest.Permanent},
		{Name: "request too large", Err: rpctypes.ErrRequestTooLarge, Want: enginetest.Permanent},
		{Name: "lease not found", Err: rpctypes.ErrLeaseNotFound, Want: enginetest.Permanent},
		{Name: "invalid argument", Err: status.Error(codes.InvalidArgument, "bad"), Want: enginetest.Permanent},
		{Name: "not found", Err: kvstore.ErrNotFound, Want: enginetest.Permanent},
		{Name: "closed", Err: ErrClosed, Want: enginetest.Permanent},
		{Name: "plain", Err: errors.New("boom"), Want: enginetest.Permanent},
	}, []error{context.Canceled, context.DeadlineExceeded, rpctypes.ErrNoLeader})
}

// A call that ran out of its own bound failed for want of an answer, whatever its error says; within its
// bound, or once the caller gave up, the error is what classify makes of it.
func TestFailed(t *testing.T) {
	odd := errors.New("some error the server made of the deadline")
	live := context.Background()
	expired, cancel := context.WithTimeout(live, 0)
	defer cancel()
	if err := failed(live, expired, odd); !fault.IsTransient(err) || !errors.Is(err, odd) {
		t.Errorf("failed after the call's bound = %v, want it transient", err)
	}
	if err := failed(live, live, odd); err != odd {
		t.Errorf("failed within the call's bound = %v, want it unchanged", err)
	}
	if err := failed(expired, expired, odd); err != odd {
		t.Errorf("failed after the caller's own deadline = %v, want it unchanged", err)
	}
	if failed(live, expired, nil) != nil {
		t.Error("failed(nil) != nil")
	}
}
