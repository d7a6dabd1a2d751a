package s3blob

import (
	"context"
	"fmt"
	"slices"

	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// abortRuleID names the lifecycle rule that aborts multipart uploads left incomplete (a process that
// died mid-Put), beside lifecycleRuleID, which expires replaced versions.
const abortRuleID = "imgmill-s3blob-abort-incomplete-uploads"

// lifecycleRules are the store's rules, scoped to its prefix: abort incomplete multipart uploads after
// a day and, in a versioned bucket, expire replaced versions (kept only for the Blobs open at the time)
// and the delete markers left over once their versions are gone after a day.
func (s *Store) lifecycleRules(versioned bool) []lifecycle.Rule {
	filter := lifecycle.Filter{Prefix: s.prefix}
	rules := []lifecycle.Rule{{
		ID: abortRuleID, Status: "Enabled", RuleFilter: filter,
		AbortIncompleteMultipartUpload: lifecycle.AbortIncompleteMultipartUpload{DaysAfterInitiation: 1},
	}}
	if versioned {
		rules = append(rules, lifecycle.Rule{
			ID: lifecycleRuleID, Status: "Enabled", RuleFilter: filter,
			NoncurrentVersionExpiration: lifecycle.NoncurrentVersionExpiration{NoncurrentDays: 1},
			Expiration:                  lifecycle.Expiration{DeleteMarker: true},
		})
	}
	return rules
}

// ensureLifecycle sets the store's lifecycle rules on the bucket, merged by rule id into the rules
// someone else configured, which stay as they are: read the configuration, replace or add the store's
// rules, write it back. Stores opening at once write the same rules. An engine without lifecycle
// configuration, or credentials without the permission, make it fail; the caller logs that and goes on,
// as the rules only save space.
func (s *Store) ensureLifecycle(ctx context.Context) error {
	versioned := false
	err := s.do(ctx, func(ctx context.Context) error {
		v, err := s.core.GetBucketVersioning(ctx, s.bucket)
		versioned = v.Enabled() || v.Suspended() // suspended still keeps the versions made before
		return err
	})
	if err != nil {
		return fmt.Errorf("read the versioning of bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	var config *lifecycle.Configuration
	err = s.do(ctx, func(ctx context.Context) (err error) {
		config, err = s.core.GetBucketLifecycle(ctx, s.bucket)
		if s3Code(err) == "NoSuchLifecycleConfiguration" {
			config, err = nil, nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("read the lifecycle of bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	if config == nil {
		config = lifecycle.NewConfiguration()
	}
	others := slices.DeleteFunc(config.Rules, func(r lifecycle.Rule) bool { return r.ID == abortRuleID || r.ID == lifecycleRuleID })
	set := func(ours []lifecycle.Rule) error {
		// The store's rules replace those of the same id; the others are kept as they are.
		config.Rules = append(slices.Clip(others), ours...)
		return s.do(ctx, func(ctx context.Context) error { return s.core.SetBucketLifecycle(ctx, s.bucket, config) })
	}
	ours := s.lifecycleRules(versioned)
	err = set(ours)
	if err != nil && refusesAbortRule(err) {
		// MinIO takes no rule that aborts incomplete uploads (it removes them itself after a day); the
		// version rule is still worth having.
		s.logger.Info("s3blob: the engine takes no lifecycle rule aborting incomplete multipart uploads; it must remove them itself (MinIO does after 24 hours)",
			"bucket", s.bucket, "code", s3Code(err))
		ours = slices.DeleteFunc(ours, func(r lifecycle.Rule) bool { return r.ID == abortRuleID })
		if len(ours) == 0 {
			return nil
		}
		err = set(ours)
	}
	if err != nil {
		return fmt.Errorf("set the lifecycle of bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	return nil
}

// refusesAbortRule reports whether err is an engine's refusal of a lifecycle configuration for an action
// it does not support (MinIO answers MalformedXML for AbortIncompleteMultipartUpload).
func refusesAbortRule(err error) bool {
	switch s3Code(err) {
	case "MalformedXML", "NotImplemented", "InvalidRequest", "InvalidArgument":
		return true
	}
	return false
}
