package publicid_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/publicid"
)

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func newCodec(t testing.TB, secret []byte) *publicid.Codec {
	t.Helper()
	c, err := publicid.New(secret)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func randomSecret(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, publicid.MinSecretLen)
	rand.Read(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	c := newCodec(t, randomSecret(t))
	ids := []int64{0, 1, 2, 3, 255, 256, 1 << 20, 1<<31 - 1, 1 << 32, 1<<53 + 1, math.MaxInt64, -1, math.MinInt64}
	for i := range int64(2000) {
		ids = append(ids, i)
	}
	seen := map[string]int64{}
	for _, id := range ids {
		pub := c.Encode(id)
		if len(pub) != publicid.Len || !publicid.WellFormed(pub) {
			t.Fatalf("Encode(%d) = %q: not %d URL-safe base64 characters", id, pub, publicid.Len)
		}
		if c.Encode(id) != pub {
			t.Fatalf("Encode(%d) is not deterministic", id)
		}
		got, err := c.Decode(pub)
		if err != nil || got != id {
			t.Fatalf("Decode(Encode(%d)) = %d, %v", id, got, err)
		}
		if prev, dup := seen[pub]; dup && prev != id {
			t.Fatalf("ids %d and %d share the public id %q", prev, id, pub)
		}
		seen[pub] = id
	}
	// The same secret in a new Codec (another frontend, a restart) agrees.
	secret := randomSecret(t)
	a, b := newCodec(t, secret), newCodec(t, bytes.Clone(secret))
	if got, err := b.Decode(a.Encode(42)); err != nil || got != 42 {
		t.Errorf("a second codec with the same secret decodes %d, %v; want 42", got, err)
	}
}

// TestTamper: changing any bit of the 32 bytes, or any character to any other character, is rejected.
func TestTamper(t *testing.T) {
	c := newCodec(t, randomSecret(t))
	for _, id := range []int64{0, 1, 7, 123456789} {
		pub := c.Encode(id)
		raw, err := base64.RawURLEncoding.DecodeString(pub)
		if err != nil || len(raw) != 32 {
			t.Fatalf("public id %q is not 32 bytes of base64url: %v", pub, err)
		}
		for bit := range len(raw) * 8 {
			bad := bytes.Clone(raw)
			bad[bit/8] ^= 1 << (bit % 8)
			s := base64.RawURLEncoding.EncodeToString(bad)
			if got, err := c.Decode(s); !errors.Is(err, publicid.ErrInvalid) {
				t.Fatalf("id %d with bit %d flipped (%q) decoded to %d, %v", id, bit, s, got, err)
			}
		}
		for i := range len(pub) {
			for _, ch := range []byte(alphabet) {
				if ch == pub[i] {
					continue
				}
				s := pub[:i] + string(ch) + pub[i+1:]
				if got, err := c.Decode(s); !errors.Is(err, publicid.ErrInvalid) {
					t.Fatalf("id %d with character %d changed to %q (%q) decoded to %d, %v", id, i, ch, s, got, err)
				}
			}
		}
	}
}

func TestWrongSecret(t *testing.T) {
	secret := randomSecret(t)
	a := newCodec(t, secret)
	other := bytes.Clone(secret)
	other[0] ^= 1
	for _, b := range []*publicid.Codec{newCodec(t, randomSecret(t)), newCodec(t, other), newCodec(t, append(bytes.Clone(secret), 0))} {
		for id := range int64(50) {
			if got, err := b.Decode(a.Encode(id)); !errors.Is(err, publicid.ErrInvalid) {
				t.Fatalf("public id of %d made with another secret decoded to %d, %v", id, got, err)
			}
		}
		if b.Encode(1) == a.Encode(1) {
			t.Error("two secrets give the same public id")
		}
	}
}

func TestMalformed(t *testing.T) {
	c := newCodec(t, randomSecret(t))
	pub := c.Encode(5)
	for _, s := range []string{
		"", "0", "1", "5", "-1", "00000000000000000000000000000000000000000005",
		pub[:publicid.Len-1], pub + "A", pub + "=", " " + pub[1:], pub[:42] + ".",
		pub[:10] + "+" + pub[11:], pub[:10] + "/" + pub[11:], pub[:10] + "%" + pub[11:], pub[:20] + "\x00" + pub[21:],
		strings.Repeat("A", publicid.Len), strings.Repeat("_", publicid.Len),
		strings.Repeat("é", 21) + "A", // 43 bytes, not the alphabet
		base64.RawStdEncoding.EncodeToString(make([]byte, 32)),
		hex.EncodeToString(make([]byte, 16)),
	} {
		if got, err := c.Decode(s); !errors.Is(err, publicid.ErrInvalid) {
			t.Errorf("Decode(%q) = %d, %v; want ErrInvalid", s, got, err)
		}
	}
	for _, s := range []string{"", pub[:42], pub + "A", strings.Repeat("é", 21) + "A", pub[:5] + "=" + pub[6:]} {
		if publicid.WellFormed(s) {
			t.Errorf("WellFormed(%q) = true", s)
		}
	}
	if !publicid.WellFormed(pub) || !publicid.WellFormed(strings.Repeat("-", publicid.Len)) {
		t.Error("WellFormed rejects the form of a public id")
	}
}

// TestConsecutiveIDsLookUnrelated: the public ids of consecutive tasks share no visible pattern.
func TestConsecutiveIDsLookUnrelated(t *testing.T) {
	c := newCodec(t, randomSecret(t))
	const n = 500
	samePos := 0
	for id := range int64(n) {
		a, b := c.Encode(id), c.Encode(id+1)
		same := 0
		for i := range a {
			if a[i] == b[i] {
				same++
			}
		}
		// Random strings agree in 43/64 < 1 position on average; more than 8 is astronomically unlikely.
		if same > 8 {
			t.Errorf("public ids of %d and %d agree in %d of %d positions: %q %q", id, id+1, same, publicid.Len, a, b)
		}
		if a[:4] == b[:4] {
			t.Errorf("public ids of %d and %d share the prefix %q", id, id+1, a[:4])
		}
		samePos += same
	}
	if avg := float64(samePos) / n; avg > 2 {
		t.Errorf("consecutive public ids agree in %.2f positions on average, want about 0.7", avg)
	}
}

func TestNewRefusesShortSecret(t *testing.T) {
	for _, n := range []int{0, 1, 16, publicid.MinSecretLen - 1} {
		if _, err := publicid.New(make([]byte, n)); err == nil {
			t.Errorf("New accepted a %d-byte secret", n)
		}
	}
}

func TestParseSecret(t *testing.T) {
	secret := randomSecret(t)
	for _, text := range []string{
		base64.StdEncoding.EncodeToString(secret), base64.RawStdEncoding.EncodeToString(secret),
		base64.URLEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret),
		" " + base64.StdEncoding.EncodeToString(secret) + "\n", publicid.FormatSecret(secret),
	} {
		got, err := publicid.ParseSecret(text)
		if err != nil || !bytes.Equal(got, secret) {
			t.Errorf("ParseSecret(%q) = %x, %v; want %x", text, got, err, secret)
		}
	}
	for _, text := range []string{"", "short", base64.StdEncoding.EncodeToString(secret[:31]), "not base64 at all!!", hex.EncodeToString(secret) + "!"} {
		if got, err := publicid.ParseSecret(text); err == nil {
			t.Errorf("ParseSecret(%q) = %x, want an error", text, got)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	c := newCodec(b, randomSecret(b))
	pub := c.Encode(12345)
	for b.Loop() {
		if _, err := c.Decode(pub); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDigest: a digest is stable for one secret, differs with the secret, the purpose and the parts
// (including where one part ends and the next begins), and does not show the parts.
func TestDigest(t *testing.T) {
	a, err := publicid.New(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	b, err := publicid.New(bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d := a.Digest("idempotency key", "192.0.2.1", "photo-1")
	if again := a.Digest("idempotency key", "192.0.2.1", "photo-1"); again != d {
		t.Errorf("digest not stable: %s then %s", d, again)
	}
	seen := map[string]string{d: "first"}
	for name, other := range map[string]string{
		"another secret":  b.Digest("idempotency key", "192.0.2.1", "photo-1"),
		"another purpose": a.Digest("other", "192.0.2.1", "photo-1"),
		"another client":  a.Digest("idempotency key", "192.0.2.2", "photo-1"),
		"moved boundary":  a.Digest("idempotency key", "192.0.2.1p", "hoto-1"),
		"joined parts":    a.Digest("idempotency key", "192.0.2.1photo-1"),
	} {
		if prev, dup := seen[other]; dup {
			t.Errorf("%s gives the same digest as %s", name, prev)
		}
		seen[other] = name
	}
	if strings.Contains(d, "192") || strings.Contains(d, "photo") || len(d) != 43 {
		t.Errorf("digest %q: want 43 characters showing nothing of its parts", d)
	}
}
