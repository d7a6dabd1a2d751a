package frontend

import (
	"bytes"
	"html/template"
	"net/http"
	"strings"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// The pages for people without JavaScript: the upload page's form (index.html's noscript form) posts
// to /submitTask with the field UIField=UIHTML before the file, and is answered 303 See Other to the
// task's page, GET /tasks/{id}, which shows its state and refreshes itself until it settles. Scripts
// that post to /submitTask without the field get the bare id, as the reference answers.

// UIField is the form field by which the upload page's own form asks for HTML answers (UIHTML), and
// the query parameter of GET /status that does the same.
const (
	UIField = "ui"
	UIHTML  = "html"
)

// refreshSeconds is how often the task page reloads itself while the task is not settled.
const refreshSeconds = 2

// pageCSP is the Content-Security-Policy of the HTML answers: no script at all, styles and images from
// this site only.
const pageCSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

var pages = template.Must(template.New("task").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{{if .Refresh}}<meta http-equiv="refresh" content="{{.Refresh}}">
{{end}}<title>{{.Title}} - imgmill</title>
<link rel="icon" href="/assets/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/assets/style.css">
</head>
<body>
<header class="top">
  <div class="wrap">
    <p class="brand"><img src="/assets/icon.svg" alt="" width="28" height="28"> imgmill</p>
  </div>
</header>
<main id="main" class="wrap">
  <section class="card">
    <h1>{{.Title}}</h1>
{{- if .Error}}
    <p class="message error" role="alert">Error: {{.Error}}</p>
    <p><a href="/">Back to the upload page</a></p>
{{- else}}
    {{- if .Name}}
    <p class="lead">{{.Name}}</p>
    {{- end}}
    <p role="status">{{.Say}}</p>
    {{- if .Op}}
    <p class="hint">Operations: <code>{{.Op}}</code></p>
    {{- end}}
    {{- if .Finished}}
    <p><img class="page-result" src="/api/tasks/{{.ID}}/result?download=0" alt="The result{{if .Name}} of {{.Name}}{{end}}"></p>
    <p><a href="/api/tasks/{{.ID}}/result" download>Download the result</a>
      · <a href="/api/tasks/{{.ID}}/result?download=0">Open the image</a></p>
    {{- end}}
    {{- if .Refresh}}
    <p class="hint">This page refreshes itself every {{.Refresh}} seconds. <a href="/tasks/{{.ID}}">Refresh</a></p>
    {{- else}}
    <p><a href="/tasks/{{.ID}}">Refresh</a></p>
    {{- end}}
    <p class="hint">Keep this page's address: the task id in it is the only way to reach your image.</p>
    <p><a href="/">Process another image</a></p>
{{- end}}
  </section>
</main>
</body>
</html>
`))

// taskPage is what the task page shows: a task, or (Error set) a refusal.
type taskPage struct {
	Title   string
	ID      string
	Name    string // the upload's file name, when known
	Op      string
	Say     string // the state, in words
	Refresh int    // seconds; 0: settled, no refresh
	// Finished shows the result and its download link.
	Finished bool
	Error    string
}

// newTaskPage is the page of the task whose public status is st.
func newTaskPage(st wire.PublicStatus) taskPage {
	p := taskPage{ID: st.ID, Name: st.Name, Op: st.Op, Refresh: refreshSeconds}
	switch st.State {
	case wire.QueuedWord:
		p.Title, p.Say = "Queued", "Your image is waiting for a worker."
		if st.Error != "" {
			p.Say = "Your image is waiting: " + st.Error + "."
		}
	case wire.ProcessingWord:
		p.Title, p.Say = "Processing", "Your image is being processed."
	case wire.FinishedWord:
		p.Title, p.Say, p.Finished, p.Refresh = "Finished", "Your image is ready.", true, 0
	case wire.FailedWord:
		p.Title, p.Say, p.Refresh = "Failed", "Processing failed: "+st.Error+".", 0
	case wire.CancelledWord:
		p.Title, p.Say, p.Refresh = "Cancelled", "The task was cancelled: there is no result.", 0
	default:
		p.Title, p.Say = "Unknown state", "The task is "+string(st.State)+"."
	}
	return p
}

// writePage answers p as HTML with status.
func writePage(w http.ResponseWriter, status int, p taskPage) error {
	var b bytes.Buffer
	if err := pages.Execute(&b, p); err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(b.Bytes())
	return err
}

// writeErrorPage answers a refusal as an HTML page carrying its "Error: ..." message and a link back,
// with the status, Retry-After and logging of every refusal (httpapi.ReplyError).
func writeErrorPage(w http.ResponseWriter, r *http.Request, err error) {
	httpapi.ReplyError(w, r, err, func(w http.ResponseWriter, status int, err error) {
		title := "Not accepted"
		if status >= 500 {
			title = "Not available right now"
		}
		if werr := writePage(w, status, taskPage{Title: title, Error: httpapi.ErrorMessage(err)}); werr != nil {
			httpapi.LoggerFrom(r.Context()).DebugContext(r.Context(), "writing an error page", "err", werr)
		}
	})
}

// htmlHandler is a handler whose refusals are HTML pages.
type htmlHandler func(w http.ResponseWriter, r *http.Request) error

func (f htmlHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		writeErrorPage(w, r, err)
	}
}

// seeTaskPage answers 303 See Other to the page of the task with public id public.
func seeTaskPage(w http.ResponseWriter, public string) {
	h := w.Header()
	h.Set("Location", "/tasks/"+public)
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusSeeOther)
}

// handleTaskPage serves GET /tasks/{id}: the task's page, for people.
func (s *server) handleTaskPage(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	st, err := s.status(r.Context(), id, public)
	if err != nil {
		return err
	}
	return writePage(w, http.StatusOK, newTaskPage(st))
}

// acceptsHTML reports whether the request names text/html among the types it accepts, as a browser's
// navigation does; scripts (curl, fetch, HTTP libraries) ask for */* or for something else.
func acceptsHTML(r *http.Request) bool {
	for part := range strings.SplitSeq(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(part, ";")
		switch strings.TrimSpace(mt) {
		case "text/html", "application/xhtml+xml":
			return true
		}
	}
	return false
}

// submitAnswer decides how /submitTask answers: html once the form's UIField said so, or, for a refusal
// before the form was read (too many uploads, a declared length over the limit), when the request is a
// browser's (acceptsHTML), since the field cannot be known yet.
type submitAnswer struct {
	html, read, browser bool
}

// handleSubmit serves POST /submitTask: the reference's text answers, or HTML ones to the page's form.
func (s *server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	a := &submitAnswer{browser: acceptsHTML(r)}
	err := s.submitTask(w, r, a)
	switch {
	case err == nil:
	case a.html || !a.read && a.browser:
		writeErrorPage(w, r, err)
	default:
		httpapi.ReplyError(w, r, err, nil)
	}
}
