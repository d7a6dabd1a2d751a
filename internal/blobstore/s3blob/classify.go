package s3blob

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/fault"
)

// what names the store in transient errors (fault).
const what = "image storage"

// classify marks the error of an S3 request as transient when it is the service's failure rather than
// the request's (see blobstore.Store): the service cannot be reached or did not answer in time
// (fault.Unavailable), or it is out of space (fault.NoSpace). The caller's own cancellation or deadline
// and every other error come back unchanged.
func classify(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return err // the caller gave up, whatever the request met meanwhile
	case fault.IsTransient(err), ours(err):
		return err
	}
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch {
		case noSpaceAnswer(resp):
			return fault.NoSpace(what, err)
		case unavailableAnswer(resp):
			return fault.Unavailable(what, err)
		}
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || networkFailure(err) {
		// A deadline while ctx lives is one of ours (a transport timeout) or minio-go's.
		return fault.Unavailable(what, err)
	}
	return err
}

// ours reports whether err is one of the store's own answers, never the service's failure: some wrap
// errors that would look like one (a short body is an io.ErrUnexpectedEOF).
func ours(err error) bool {
	for _, sentinel := range []error{blobstore.ErrNotFound, blobstore.ErrInvalidKey, blobstore.ErrStaleFence, blobstore.ErrSizeMismatch} {
		if errors.Is(err, sentinel) {
			return true
		}
	}
	return false
}

// noSpaceAnswer reports whether S3 refused a write for want of space: MinIO's drives are full
// (XMinioStorageFull, 507 Insufficient Storage) or a bucket quota is reached.
func noSpaceAnswer(resp minio.ErrorResponse) bool {
	switch resp.Code {
	case "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded":
		return true
	}
	return resp.StatusCode == http.StatusInsufficientStorage
}

// unavailableAnswer reports whether S3 answered that it cannot serve now, as opposed to refusing the
// request: it is starting, overloaded, lost the quorum of its drives, or failed inside (5xx but 501 Not
// Implemented, which says the request will never work).
func unavailableAnswer(resp minio.ErrorResponse) bool {
	switch resp.Code {
	case "ServiceUnavailable", "SlowDown", "SlowDownRead", "SlowDownWrite", "ServerBusy", "InternalError",
		"RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
		"XMinioServerNotInitialized", "XMinioIAMNotInitialized", "XMinioBucketMetadataNotInitialized",
		"XMinioReadQuorum", "XMinioWriteQuorum", "XMinioAdminConfigNoQuorum":
		return true
	}
	switch s := resp.StatusCode; {
	case s == http.StatusNotImplemented:
		return false
	case s >= 500, s == http.StatusTooManyRequests, s == http.StatusRequestTimeout:
		return true
	}
	return false
}

// networkFailure reports whether err is the failure of a connection to the service: refused, reset or
// cut short, timed out, or a name that did not resolve. A certificate the client refuses, or a plain
// HTTP answer to HTTPS, is the configuration's fault, not the network's.
func networkFailure(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
		recordHeader     tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknownAuthority), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verification), errors.As(err, &recordHeader),
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return false
	}
	var (
		netErr net.Error
		opErr  *net.OpError
		urlErr *url.Error
	)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.ETIMEDOUT):
		return true
	case errors.Is(err, io.ErrUnexpectedEOF): // a response cut short
		return true
	case errors.As(err, &opErr), errors.As(err, &netErr) && netErr.Timeout():
		return true
	case errors.As(err, &urlErr):
		// Whatever else failed on the way to the service and back (the connection closed before an
		// answer, io.EOF; a malformed answer from a proxy): the request did not get through.
		return true
	}
	return false
}
