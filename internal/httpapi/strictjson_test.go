package httpapi_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func TestDecodeStrict(t *testing.T) {
	type inner struct {
		A int `json:"a"`
	}
	type body struct {
		ID    int     `json:"id"`
		Items []inner `json:"items"`
	}
	var b body
	if err := httpapi.DecodeStrict(strings.NewReader(`{"id":3,"items":[{"a":1},{"a":2}]}`), 1024, &b); err != nil || b.ID != 3 || len(b.Items) != 2 {
		t.Errorf("a well-formed body: %+v, %v", b, err)
	}
	for _, tc := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"id":1,"id":2}`, http.StatusBadRequest, `the key "id" is given twice`},
		{`{"id":1,"items":[{"a":1,"a":2}]}`, http.StatusBadRequest, `the key "a" is given twice`},
		{`{"id":1,"extra":true}`, http.StatusBadRequest, `unknown field "extra"`},
		{`{"id":1}{"id":2}`, http.StatusBadRequest, "unexpected data after the JSON object"},
		{`{"id":1`, http.StatusBadRequest, "unexpected EOF"},
		{`{"id":` + strings.Repeat("1", 2000) + `}`, http.StatusRequestEntityTooLarge, "body over 1024 bytes"},
	} {
		err := httpapi.DecodeStrict(strings.NewReader(tc.body), 1024, &body{})
		if httpapi.StatusOf(err) != tc.status || !strings.Contains(httpapi.ErrorMessage(err), tc.want) {
			t.Errorf("%.40s: %v, want %d %q", tc.body, err, tc.status, tc.want)
		}
	}
}
