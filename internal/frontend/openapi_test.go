package frontend_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"mime"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// openAPI is the parsed openapi.json, with the small JSON Schema checker the tests hold answers to.
type openAPI struct {
	doc map[string]any
}

func loadOpenAPI(t *testing.T) openAPI {
	t.Helper()
	b, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return openAPI{doc: doc}
}

// schemaKeywords are the JSON Schema keywords the document may use: those check enforces and the
// annotations it may ignore. Another keyword would be silently unchecked, so the test refuses it.
var schemaKeywords = map[string]bool{
	"$ref": true, "type": true, "properties": true, "required": true, "additionalProperties": true, "items": true,
	"enum": true, "const": true, "format": true, "pattern": true, "minimum": true, "maximum": true, "minLength": true, "maxLength": true,
	"description": true, "contentMediaType": true,
}

// schemas calls f with every schema in the document: components, parameters, headers, bodies, and
// those nested in them.
func (o openAPI) schemas(f func(where string, s map[string]any)) {
	var walk func(where string, v any, isSchema bool)
	walk = func(where string, v any, isSchema bool) {
		switch v := v.(type) {
		case map[string]any:
			if isSchema {
				f(where, v)
				for name, p := range asMap(v["properties"]) {
					walk(where+".properties."+name, p, true)
				}
				if items, ok := v["items"]; ok {
					walk(where+".items", items, true)
				}
				return
			}
			for k, c := range v {
				walk(where+"."+k, c, k == "schema" || strings.HasSuffix(where, "components.schemas"))
			}
		case []any:
			for i, c := range v {
				walk(where+"["+strconv.Itoa(i)+"]", c, false)
			}
		}
	}
	walk("", o.doc, false)
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }

// check reports why v (decoded JSON) does not match schema s, or nil.
func (o openAPI) check(s map[string]any, v any, at string) error {
	if ref, ok := s["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/components/schemas/")
		target := asMap(asMap(asMap(o.doc["components"])["schemas"])[name])
		if !ok || target == nil {
			return fmt.Errorf("%s: unresolved $ref %q", at, ref)
		}
		return o.check(target, v, at)
	}
	if typ, ok := s["type"].(string); ok && !hasType(typ, v) {
		return fmt.Errorf("%s: %v is not of type %s", at, v, typ)
	}
	if c, ok := s["const"]; ok && v != c {
		return fmt.Errorf("%s: %v, want %v", at, v, c)
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, v) {
		return fmt.Errorf("%s: %v is none of %v", at, v, enum)
	}
	if str, ok := v.(string); ok {
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			return fmt.Errorf("%s: %q does not match %s", at, str, p)
		}
		if n, ok := s["minLength"].(float64); ok && float64(len([]rune(str))) < n {
			return fmt.Errorf("%s: %q is shorter than %v", at, str, n)
		}
		if n, ok := s["maxLength"].(float64); ok && float64(len([]rune(str))) > n {
			return fmt.Errorf("%s: %q is longer than %v", at, str, n)
		}
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				return fmt.Errorf("%s: %q is no date-time: %v", at, str, err)
			}
		}
	}
	if n, ok := v.(float64); ok {
		if min, ok := s["minimum"].(float64); ok && n < min {
			return fmt.Errorf("%s: %v is below %v", at, n, min)
		}
		if max, ok := s["maximum"].(float64); ok && n > max {
			return fmt.Errorf("%s: %v is above %v", at, n, max)
		}
	}
	if obj, ok := v.(map[string]any); ok {
		props := asMap(s["properties"])
		for _, r := range asSlice(s["required"]) {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: no %q", at, r)
			}
		}
		for k, pv := range obj {
			ps, ok := props[k]
			if !ok {
				if s["additionalProperties"] == false {
					return fmt.Errorf("%s: property %q is not in the schema", at, k)
				}
				continue
			}
			if err := o.check(asMap(ps), pv, at+"."+k); err != nil {
				return err
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if items := asMap(s["items"]); items != nil {
			for i, e := range arr {
				if err := o.check(items, e, at+"["+strconv.Itoa(i)+"]"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func asSlice(v any) []any { a, _ := v.([]any); return a }

func hasType(typ string, v any) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		n, ok := v.(float64)
		return ok && n == float64(int64(n))
	case "null":
		return v == nil
	}
	return false
}

// operation is the document's operation for method and path (a template such as /api/tasks/{id}).
func (o openAPI) operation(method, path string) map[string]any {
	return asMap(asMap(asMap(o.doc["paths"])[path])[strings.ToLower(method)])
}

// expectAnswer checks that r, the answer to method on path, has a status the document lists for that
// operation and, for JSON or text, a body its schema accepts.
func (o openAPI) expectAnswer(t *testing.T, method, path string, r servicetest.Reply) {
	t.Helper()
	what := fmt.Sprintf("%s %s = %d", method, path, r.Status)
	op := o.operation(method, path)
	if op == nil {
		t.Errorf("%s: the document has no such operation", what)
		return
	}
	resp := asMap(asMap(op["responses"])[strconv.Itoa(r.Status)])
	if resp == nil {
		t.Errorf("%s: the document lists no %d answer for it (%q)", what, r.Status, r.Body)
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	content := asMap(resp["content"])
	if len(content) == 0 {
		if r.Body != "" {
			t.Errorf("%s: a body %q where the document says none", what, r.Body)
		}
		return
	}
	media := asMap(content[mt])
	if media == nil {
		for k, m := range content { // image/*
			if prefix, ok := strings.CutSuffix(k, "*"); ok && strings.HasPrefix(mt, prefix) {
				media = asMap(m)
			}
		}
	}
	if media == nil {
		t.Errorf("%s: Content-Type %q is not among the document's %v", what, mt, content)
		return
	}
	var v any = r.Body
	switch mt {
	case "application/json":
		if err := json.Unmarshal([]byte(r.Body), &v); err != nil {
			t.Errorf("%s: %q is not JSON: %v", what, r.Body, err)
			return
		}
	case "text/plain":
	default:
		return // an image or a stream: its type is the check
	}
	if err := o.check(asMap(media["schema"]), v, "body"); err != nil {
		t.Errorf("%s: %q does not match the document: %v", what, r.Body, err)
	}
}

// registeredRoutes are the "METHOD /path" patterns routes.go registers, read from its source: the
// routes as written, whichever test exercises them. Catch-alls (no method) are left out.
func registeredRoutes(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "routes.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return true
		}
		if sel, ok := call.Fun.(*ast.SelectorExpr); !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
			return true
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !ok {
			t.Errorf("routes.go: a route whose pattern is not a literal at %v", call.Pos())
			return true
		}
		pattern, _ := strconv.Unquote(lit.Value)
		if method, path, ok := strings.Cut(pattern, " "); ok {
			routes = append(routes, method+" "+strings.TrimSuffix(path, "{$}"))
		}
		return true
	})
	if len(routes) < 10 {
		t.Fatalf("read only %d routes from routes.go: %v", len(routes), routes)
	}
	return routes
}

// TestOpenAPIRoutes: the document describes every route the frontend registers, and nothing else.
func TestOpenAPIRoutes(t *testing.T) {
	o := loadOpenAPI(t)
	if o.doc["openapi"] != "3.1.0" {
		t.Errorf("openapi %v, want 3.1.0", o.doc["openapi"])
	}
	routes := registeredRoutes(t)
	var documented []string
	operationIDs := map[string]bool{}
	for path, item := range asMap(o.doc["paths"]) {
		for method, op := range asMap(item) {
			what := strings.ToUpper(method) + " " + path
			documented = append(documented, what)
			op := asMap(op)
			if id, _ := op["operationId"].(string); id == "" || operationIDs[id] {
				t.Errorf("%s: operationId %q missing or not unique", what, id)
			} else {
				operationIDs[id] = true
			}
			responses := asMap(op["responses"])
			if len(responses) == 0 {
				t.Errorf("%s: no responses", what)
			}
			for code, r := range responses {
				if d, _ := asMap(r)["description"].(string); d == "" {
					t.Errorf("%s: answer %s has no description (OpenAPI requires one)", what, code)
				}
			}
			// Every {param} of the path is a path parameter of the operation, and the other way round.
			var inPath, params []string
			for _, m := range regexp.MustCompile(`\{(\w+)\}`).FindAllStringSubmatch(path, -1) {
				inPath = append(inPath, m[1])
			}
			for _, p := range asSlice(op["parameters"]) {
				if p := asMap(p); p["in"] == "path" {
					params = append(params, p["name"].(string))
					if p["required"] != true {
						t.Errorf("%s: path parameter %v not required", what, p["name"])
					}
				}
			}
			if !slices.Equal(inPath, params) {
				t.Errorf("%s: path parameters %v, want %v", what, params, inPath)
			}
		}
	}
	for _, r := range routes {
		if !slices.Contains(documented, r) {
			t.Errorf("route %q is not in openapi.json: describe it there", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(routes, d) {
			t.Errorf("openapi.json describes %q, which routes.go does not register", d)
		}
	}
	o.schemas(func(where string, s map[string]any) {
		for k := range s {
			if !schemaKeywords[k] {
				t.Errorf("%s: schema keyword %q, which the test's checker does not know", where, k)
			}
		}
	})
}

// TestOpenAPISchemaChecker: the checker the answers are held to refuses what the schemas exclude.
func TestOpenAPISchemaChecker(t *testing.T) {
	o := loadOpenAPI(t)
	ref := func(name string) map[string]any { return map[string]any{"$ref": "#/components/schemas/" + name} }
	id := strings.Repeat("a", 43)
	good := map[string]any{"id": id, "state": "queued", "statusUrl": "/s", "resultUrl": "/r", "eventsUrl": "/e", "sourceUrl": "/o"}
	if err := o.check(ref("TaskCreated"), good, "good"); err != nil {
		t.Errorf("a good TaskCreated: %v", err)
	}
	for name, mutate := range map[string]func(m map[string]any){
		"an extra field":     func(m map[string]any) { m["status"] = "queued" },
		"a missing field":    func(m map[string]any) { delete(m, "eventsUrl") },
		"another state":      func(m map[string]any) { m["state"] = "finished" },
		"a short id":         func(m map[string]any) { m["id"] = "abc" },
		"a number for a URL": func(m map[string]any) { m["statusUrl"] = 1.0 },
	} {
		bad := map[string]any{}
		for k, v := range good {
			bad[k] = v
		}
		mutate(bad)
		if o.check(ref("TaskCreated"), bad, "bad") == nil {
			t.Errorf("TaskCreated with %s passed the check", name)
		}
	}
	status := map[string]any{"id": id, "state": "queued", "attempts": 1.5, "maxAttempts": 3.0}
	if o.check(ref("Status"), status, "status") == nil {
		t.Error("a Status with 1.5 attempts passed the check")
	}
	status["attempts"], status["createdAt"] = 0.0, "yesterday"
	if o.check(ref("Status"), status, "status") == nil {
		t.Error("a Status created \"yesterday\" passed the check")
	}
}

// TestOpenAPIAnswers: real answers of the frontend, successes and refusals, match the document.
func TestOpenAPIAnswers(t *testing.T) {
	s := newStack(t)
	o := loadOpenAPI(t)
	img := servicetest.PatternPNG(t, 8, 7)

	r := s.call(t, http.MethodGet, "/api/openapi.json", "", nil)
	if want, _ := os.ReadFile("openapi.json"); r.Status != http.StatusOK || r.Body != string(want) {
		t.Errorf("GET /api/openapi.json: %d, %d bytes, want 200 and openapi.json's %d", r.Status, len(r.Body), len(want))
	}
	o.expectAnswer(t, "GET", "/api/openapi.json", r)
	o.expectAnswer(t, "GET", "/api/operations", s.call(t, http.MethodGet, "/api/operations", "", nil))

	r = s.createForm(t, "?op=grayscale", part{field: frontend.FileField, filename: "a.png", data: img})
	o.expectAnswer(t, "POST", "/api/tasks", r)
	pub := s.created(t, r)
	o.expectAnswer(t, "GET", "/api/tasks/{id}", s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil))
	o.expectAnswer(t, "GET", "/status", s.call(t, http.MethodGet, "/status?id="+pub, "", nil))
	o.expectAnswer(t, "GET", "/isReady", s.call(t, http.MethodGet, "/isReady?id="+pub, "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/result", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/source", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/source", "", nil))
	s.finish(t, s.internal(t, pub), img)
	o.expectAnswer(t, "GET", "/api/tasks/{id}", s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/result", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/result", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result?download=0", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/result", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result?download=no", "", nil))
	for _, suffix := range []string{"/result", "/source"} { // 304 to a client holding the image
		path := "/api/tasks/" + pub + suffix
		etag := s.call(t, http.MethodGet, path, "", nil).Header.Get("ETag")
		r := s.callWith(t, http.MethodGet, path, "", nil, http.Header{"If-None-Match": {etag}})
		if r.Status != http.StatusNotModified {
			t.Errorf("GET %s with If-None-Match %q: %d, want 304", path, etag, r.Status)
		}
		o.expectAnswer(t, "GET", "/api/tasks/{id}"+suffix, r)
	}
	for _, suffix := range []string{"/result", "/source"} { // thumbnails, and a bad width
		o.expectAnswer(t, "GET", "/api/tasks/{id}"+suffix, s.call(t, http.MethodGet, "/api/tasks/"+pub+suffix+"?w=16", "", nil))
		o.expectAnswer(t, "GET", "/api/tasks/{id}"+suffix, s.call(t, http.MethodGet, "/api/tasks/"+pub+suffix+"?w=8", "", nil))
	}
	o.expectAnswer(t, "GET", "/getImage", s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil))
	o.expectAnswer(t, "POST", "/api/tasks/{id}/cancel", s.call(t, http.MethodPost, "/api/tasks/"+pub+"/cancel", "", nil))

	queued := s.parsePublicID(t, s.submit(t, part{field: frontend.UploadField, filename: "a.png", data: img}).Body)
	o.expectAnswer(t, "POST", "/submitTask", s.submit(t, part{field: frontend.UploadField, filename: "a.png", data: img}))
	o.expectAnswer(t, "POST", "/api/tasks/{id}/cancel", s.call(t, http.MethodPost, "/api/tasks/"+queued+"/cancel", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}", s.call(t, http.MethodGet, "/api/tasks/"+queued, "", nil))
	o.expectAnswer(t, "DELETE", "/api/tasks/{id}", s.call(t, http.MethodDelete, "/api/tasks/"+queued, "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}", s.call(t, http.MethodGet, "/api/tasks/"+queued, "", nil))

	// Refusals.
	o.expectAnswer(t, "POST", "/api/tasks", s.createForm(t, "", part{field: "ops", data: []byte("grayscale")}))
	o.expectAnswer(t, "POST", "/api/tasks", s.createRaw(t, "?op=blurr", img))
	o.expectAnswer(t, "POST", "/api/tasks", s.createRaw(t, "", []byte("not an image")))
	o.expectAnswer(t, "POST", "/submitTask", s.submit(t, part{field: "nothing", data: img}))
	o.expectAnswer(t, "GET", "/isReady", s.call(t, http.MethodGet, "/isReady", "", nil))
	o.expectAnswer(t, "GET", "/status", s.call(t, http.MethodGet, "/status?id="+strings.Repeat("A", 43), "", nil))
	o.expectAnswer(t, "GET", "/api/tasks/{id}/events", s.call(t, http.MethodGet, "/api/tasks/nope/events", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks.zip", s.call(t, http.MethodGet, "/api/tasks.zip?ids="+pub+",nope", "", nil))
	o.expectAnswer(t, "GET", "/api/tasks.zip", s.call(t, http.MethodGet, "/api/tasks.zip", "", nil))
	o.expectAnswer(t, "GET", "/api/events", s.call(t, http.MethodGet, "/api/events", "", nil))
	o.expectAnswer(t, "GET", "/api/events", s.call(t, http.MethodGet, "/api/events?ids="+pub+",nope", "", nil))
	o.expectAnswer(t, "GET", "/healthz", s.call(t, http.MethodGet, "/healthz", "", nil))
	o.expectAnswer(t, "GET", "/livez", s.call(t, http.MethodGet, "/livez", "", nil))
	o.expectAnswer(t, "GET", "/", s.call(t, http.MethodGet, "/", "", nil))
	o.expectAnswer(t, "GET", "/api/limits", s.call(t, http.MethodGet, "/api/limits", "", nil))
	o.expectAnswer(t, "GET", "/tasks/{id}", s.call(t, http.MethodGet, "/tasks/"+pub, "", nil))
	o.expectAnswer(t, "GET", "/tasks/{id}", s.call(t, http.MethodGet, "/tasks/"+strings.Repeat("A", 43), "", nil))
	ct, body := form(t, pageForm, part{field: frontend.UploadField, filename: "a.png", data: img})
	o.expectAnswer(t, "POST", "/submitTask", s.noRedirect(t, http.MethodPost, "/submitTask", ct, body, nil))
	o.expectAnswer(t, "GET", "/status", s.noRedirect(t, http.MethodGet, "/status?ui=html&id="+pub, "", nil, nil))
	o.expectAnswer(t, "POST", "/submitTask", s.submit(t, pageForm, part{field: frontend.UploadField, filename: "a.txt", data: []byte("text")}))
	if b := []byte(s.call(t, http.MethodGet, "/api/tasks/"+pub+"/events", "", nil).Body); !bytes.HasPrefix(b, []byte("event: status\n")) {
		t.Errorf("events of a finished task: %q", b)
	}
}
