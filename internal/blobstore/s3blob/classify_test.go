package s3blob

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/enginetest"
)

func TestClassify(t *testing.T) {
	answer := func(status int, code string) error {
		return fmt.Errorf("put k: %w", minio.ErrorResponse{StatusCode: status, Code: code, Message: "from the server"})
	}
	refused := &url.Error{Op: "Put", URL: "http://127.0.0.1:9000/b/k", Err: &net.OpError{Op: "dial", Net: "tcp",
		Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	enginetest.CheckClassify(t, classify, []enginetest.ClassifyCase{
		{Name: "full drives", Err: answer(507, "XMinioStorageFull"), Want: enginetest.Full},
		{Name: "507 of another service", Err: answer(507, "InsufficientStorage"), Want: enginetest.Full},
		{Name: "bucket quota", Err: answer(400, "XMinioAdminBucketQuotaExceeded"), Want: enginetest.Full},
		{Name: "slow down", Err: answer(503, "SlowDown"), Want: enginetest.Away},
		{Name: "slow down write (lost write quorum)", Err: answer(503, "SlowDownWrite"), Want: enginetest.Away},
		{Name: "read quorum", Err: answer(503, "XMinioReadQuorum"), Want: enginetest.Away},
		{Name: "starting", Err: answer(503, "XMinioServerNotInitialized"), Want: enginetest.Away},
		{Name: "internal error", Err: answer(500, "InternalError"), Want: enginetest.Away},
		{Name: "request timeout", Err: answer(400, "RequestTimeout"), Want: enginetest.Away},
		{Name: "HEAD answered 503 (no body)", Err: answer(503, "503 Service Unavailable"), Want: enginetest.Away},
		{Name: "bad gateway", Err: answer(502, "502 Bad Gateway"), Want: enginetest.Away},
		{Name: "too many requests", Err: answer(429, "429 Too Many Requests"), Want: enginetest.Away},
		{Name: "access denied", Err: answer(403, "AccessDenied"), Want: enginetest.Permanent},
		{Name: "wrong secret", Err: answer(403, "SignatureDoesNotMatch"), Want: enginetest.Permanent},
		{Name: "no such bucket", Err: answer(404, "NoSuchBucket"), Want: enginetest.Permanent},
		{Name: "precondition failed", Err: answer(412, "PreconditionFailed"), Want: enginetest.Permanent},
		{Name: "not implemented", Err: answer(501, "NotImplemented"), Want: enginetest.Permanent},
		{Name: "connection refused", Err: refused, Want: enginetest.Away},
		{Name: "connection reset", Err: &url.Error{Op: "Get", URL: "http://h/b/k", Err: syscall.ECONNRESET}, Want: enginetest.Away},
		{Name: "connection closed before an answer", Err: &url.Error{Op: "Put", URL: "http://h/b/k", Err: io.EOF}, Want: enginetest.Away},
		{Name: "a bare net.OpError", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ETIMEDOUT}, Want: enginetest.Away},
		{Name: "answer cut short", Err: fmt.Errorf("read: %w", io.ErrUnexpectedEOF), Want: enginetest.Away},
		{Name: "no such host", Err: &url.Error{Op: "Get", URL: "http://nowhere/b", Err: &net.DNSError{Err: "no such host", Name: "nowhere"}}, Want: enginetest.Away},
		{Name: "a deadline of ours", Err: fmt.Errorf("stat: %w", context.DeadlineExceeded), Want: enginetest.Away},
		{Name: "unknown certificate authority", Err: &url.Error{Op: "Get", URL: "https://h/b", Err: x509.UnknownAuthorityError{}}, Want: enginetest.Permanent},
		{Name: "plain HTTP answer to HTTPS", Err: &url.Error{Op: "Get", URL: "https://h/b", Err: errors.New("http: server gave HTTP response to HTTPS client")}, Want: enginetest.Permanent},
		{Name: "stale fence", Err: fmt.Errorf("put: %w", blobstore.ErrStaleFence), Want: enginetest.Permanent},
		{Name: "short body", Err: shortBody(), Want: enginetest.Permanent}, // wraps io.ErrUnexpectedEOF
		{Name: "the caller's reader", Err: errors.New("boom"), Want: enginetest.Permanent},
	}, []error{context.Canceled, refused, answer(503, "SlowDown")})
}

// shortBody is the error of a body shorter than its announced size.
func shortBody() error {
	_, err := io.ReadAll(blobstore.ExactSize(eofReader{}, 3))
	return fmt.Errorf("read body: %w", err)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
