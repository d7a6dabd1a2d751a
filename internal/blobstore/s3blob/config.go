package s3blob

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Config says where the store lives and how to reach it. ParseURL builds one from an s3:// URL.
type Config struct {
	// Bucket holds the blobs; Open creates it when missing.
	Bucket string
	// Endpoint is the S3 service, "http://HOST:PORT" or "https://HOST[:PORT]"; the scheme selects TLS.
	Endpoint string
	// Region is the bucket's region; empty lets the client ask the service (MinIO answers us-east-1).
	Region string
	// Prefix, when set, is prepended to every key ("imgmill/" makes key "working/42" the object
	// "imgmill/working/42"), so that several stores, or other data, can share a bucket.
	Prefix    string
	AccessKey string
	SecretKey string
	// PartSize is the size of the parts of a multipart upload, and so the memory one Put holds at most;
	// 0 means DefaultPartSize. S3 wants at least MinPartSize.
	PartSize int64
	// StallTimeout is how long a request may wait for the service without any progress (a byte of its
	// body taken, an answer, a byte of the answer's body) before it fails as unavailable, so that a
	// service that accepts connections but answers nothing (hung, frozen, stalled by its disks) fails
	// calls instead of holding them. 0 means DefaultStallTimeout.
	StallTimeout time.Duration
	// Logger gets what the store reports outside of its calls' errors: that it waits for a service that
	// did not answer at Open, and that it answers. nil discards it.
	Logger *slog.Logger
}

// The parameters an s3:// URL may carry.
const (
	paramEndpoint  = "endpoint"
	paramAccessKey = "access_key"
	paramSecretKey = "secret_key"
	paramRegion    = "region"
	paramPrefix    = "prefix"
)

// ParseURL parses s3://BUCKET?endpoint=http://HOST:PORT&access_key=K&secret_key=S, with optional
// region= and prefix= parameters. When the URL has neither key, getenv supplies them from
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the URL cannot give one key and the environment the
// other, so that one setting never mixes two identities.
func ParseURL(raw string, getenv func(string) string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, which may hold a secret key: report only the cause.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return Config{}, fmt.Errorf("s3blob: malformed URL: %w", err)
	}
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("s3blob: URL scheme must be s3, not %q (s3://BUCKET?endpoint=...)", u.Scheme)
	}
	if u.Opaque != "" {
		return Config{}, errors.New("s3blob: URL must be s3://BUCKET?endpoint=..., with two slashes")
	}
	if u.User != nil {
		return Config{}, errors.New("s3blob: credentials go in the access_key and secret_key parameters, not before the bucket")
	}
	if u.Fragment != "" {
		return Config{}, errors.New("s3blob: URL must not have a #fragment")
	}
	cfg := Config{Bucket: u.Host}
	if cfg.Bucket == "" {
		return Config{}, errors.New("s3blob: URL names no bucket (s3://BUCKET?endpoint=...)")
	}
	if u.Path != "" && u.Path != "/" {
		return Config{}, fmt.Errorf("s3blob: URL path %q: put a key prefix in the prefix parameter", u.Path)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("s3blob: malformed URL parameters: %w", err)
	}
	for name, values := range q {
		switch name {
		case paramEndpoint, paramAccessKey, paramSecretKey, paramRegion, paramPrefix:
		default:
			return Config{}, fmt.Errorf("s3blob: unknown URL parameter %q (known: endpoint, access_key, secret_key, region, prefix)", name)
		}
		if len(values) > 1 {
			return Config{}, fmt.Errorf("s3blob: URL parameter %q given %d times", name, len(values))
		}
	}
	cfg.Endpoint = q.Get(paramEndpoint)
	cfg.Region = q.Get(paramRegion)
	cfg.Prefix = q.Get(paramPrefix)
	_, hasKey := q[paramAccessKey]
	_, hasSecret := q[paramSecretKey]
	switch {
	case hasKey && hasSecret:
		cfg.AccessKey, cfg.SecretKey = q.Get(paramAccessKey), q.Get(paramSecretKey)
	case hasKey || hasSecret:
		return Config{}, errors.New("s3blob: URL must have both access_key and secret_key, or neither (then AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are used)")
	default:
		cfg.AccessKey, cfg.SecretKey = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
		if cfg.AccessKey == "" || cfg.SecretKey == "" {
			return Config{}, errors.New("s3blob: no credentials: give access_key and secret_key in the URL, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// prefixPattern: slash-separated segments of characters that need no escaping in an object name.
var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?$`)

// validate checks a Config however it was made (ParseURL or by hand), so that Open fails clearly.
func (c Config) validate() error {
	if c.Bucket == "" {
		return errors.New("s3blob: no bucket")
	}
	if err := s3utils.CheckValidBucketNameStrict(c.Bucket); err != nil {
		return fmt.Errorf("s3blob: bucket %q: %w", c.Bucket, err)
	}
	if _, _, err := c.endpoint(); err != nil {
		return err
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		return errors.New("s3blob: no credentials (access key and secret key)")
	}
	if c.Prefix != "" {
		if !prefixPattern.MatchString(c.Prefix) {
			return fmt.Errorf("s3blob: prefix %q: want segments of [A-Za-z0-9_.-] separated by single slashes", c.Prefix)
		}
		for seg := range strings.SplitSeq(strings.TrimSuffix(c.Prefix, "/"), "/") {
			if seg == "." || seg == ".." {
				return fmt.Errorf("s3blob: prefix %q: no . or .. segments", c.Prefix)
			}
		}
	}
	if c.StallTimeout < 0 {
		return fmt.Errorf("s3blob: negative stall timeout %v", c.StallTimeout)
	}
	if c.PartSize != 0 && (c.PartSize < MinPartSize || c.PartSize > maxPartSize) {
		return fmt.Errorf("s3blob: part size %d: want %d to %d bytes", c.PartSize, MinPartSize, maxPartSize)
	}
	return nil
}

// endpoint returns the endpoint's host[:port] and whether it uses TLS.
func (c Config) endpoint() (host string, secure bool, err error) {
	if c.Endpoint == "" {
		return "", false, errors.New("s3blob: no endpoint (endpoint=http://HOST:PORT)")
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		// Typically a missing scheme ("HOST:PORT"), which url.Parse cannot tell.
		return "", false, fmt.Errorf("s3blob: endpoint %q: want a URL with scheme http or https (http://HOST:PORT): %w", c.Endpoint, err)
	}
	switch u.Scheme {
	case "http":
	case "https":
		secure = true
	default:
		return "", false, fmt.Errorf("s3blob: endpoint %q: scheme must be http or https", c.Endpoint)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", false, fmt.Errorf("s3blob: endpoint %q names no host", c.Endpoint)
	}
	if u.User != nil {
		// Not echoed: it holds a password.
		return "", false, errors.New("s3blob: endpoint must not hold credentials; use access_key and secret_key")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", false, fmt.Errorf("s3blob: endpoint %q: want only scheme://host[:port]", c.Endpoint)
	}
	return u.Host, secure, nil
}

// keyPrefix is Prefix as it goes before keys: "" or ending in one slash.
func (c Config) keyPrefix() string {
	if c.Prefix == "" {
		return ""
	}
	return strings.TrimSuffix(c.Prefix, "/") + "/"
}

// String returns the configuration as an s3:// URL without the secret key, for logs and errors.
func (c Config) String() string {
	q := url.Values{}
	q.Set(paramEndpoint, c.Endpoint)
	if c.Region != "" {
		q.Set(paramRegion, c.Region)
	}
	if c.Prefix != "" {
		q.Set(paramPrefix, c.Prefix)
	}
	if c.AccessKey != "" {
		// The access key names the identity, which helps diagnose a refusal; it is no secret.
		q.Set(paramAccessKey, c.AccessKey)
	}
	u := url.URL{Scheme: "s3", Host: c.Bucket, RawQuery: q.Encode()}
	return u.String()
}

// GoString keeps %#v from printing the secret key too.
func (c Config) GoString() string { return "s3blob.Config(" + c.String() + ")" }
