#!/usr/bin/env python3
"""Sort the samples of `go tool pprof -traces BINARY PROFILE` (on stdin) into areas, each sample into
exactly one: the first rule its stack matches, in the order below. See docs/PERFORMANCE.md,
"Where the time goes at 64 px"."""
import re, sys
from collections import defaultdict

def dur(s):
    m = re.fullmatch(r'([\d.]+)(ns|us|µs|ms|s|m|h)', s)
    v, u = float(m.group(1)), m.group(2)
    return v * {'ns': 1e-9, 'us': 1e-6, 'µs': 1e-6, 'ms': 1e-3, 's': 1, 'm': 60, 'h': 3600}[u]

samples = []
cur = None
for line in sys.stdin:
    if line.startswith('-----------+'):
        if cur: samples.append(cur)
        cur = None
        continue
    m = re.match(r'^\s+([\d.]+(?:ns|us|µs|ms|s|m|h))\s+(\S.*)$', line)
    if m and cur is None:
        cur = [dur(m.group(1)), [m.group(2).strip()]]
        continue
    if cur is not None and line.strip():
        cur[1].append(line.strip())
if cur: samples.append(cur)

IMG = 'github.com/imgmill/imgmill/internal/'
def any_(frames, pat): return any(re.search(pat, f) for f in frames)

def area(frames):  # frames: leaf first
    if any_(frames, r'bench\.(runFloor|generate|verify)\b|bench\.Run\.|testimage\.'):
        return None  # the harness: generating images, checking results, the floor
    if any_(frames, r'bench\.(runPipeline|waitReady)'):
        return "the bench's clients (outside the pipeline: upload, long poll)"
    if any_(frames, r'runtime\.(gcBgMarkWorker|bgsweep|bgscavenge|gcAssistAlloc|GC$|markroot)'):
        return 'GC (background marking, assists, sweeping)'
    if any_(frames, r'imageop\.|pngenc\.|image/png\.|compress/flate|compress/zlib|klauspost/compress|^image\.'):
        return 'image work (decode, swap, encode; header checks)'
    if any_(frames, r'^modernc\.org/'):
        if any_(frames[:8], r'[Ff]sync|[Ff]datasync'):
            return 'SQLite: fsync'
        return 'SQLite: statements, commits (modernc, pure Go)'
    if any_(frames, r'groupsync\.|[Ss]yncfs'):
        return 'shared flushes (groupsync: syncfs, WAL fsync)'
    if any_(frames, r'blobstore/fileblob|atomicfile\.'):
        return 'file store: create, write, rename, read'
    if any_(frames, r'^encoding/json|strictjson'):
        return 'JSON'
    if any_(frames, r'^log/slog'):
        return 'logging (slog)'
    if any_(frames, r'prometheus|internal/metrics'):
        return 'metrics'
    inner = next((i for i, f in enumerate(frames) if f.startswith(IMG)), None)
    if inner is not None:
        leafward = frames[:inner]
        if any_(leafward, r'^net/http|^net\.|^internal/poll|^syscall|^bufio|^net/textproto|^net/url|^mime'):
            return 'HTTP: net/http, sockets, syscalls'
        pkg = frames[inner][len(IMG):].split('.')[0]
        if pkg == 'httpapi':
            return 'middleware (httpapi)'
        return 'service code: ' + pkg
    if any_(frames, r'^net/http|^net\.|^internal/poll|^syscall\.|^bufio|^net/textproto'):
        return 'HTTP: net/http, sockets, syscalls'
    if any_(frames, r'runtime\.(mcall|schedule|findRunnable|park_m|goexit0|netpoll|futex|notesleep|stopm|startm|wakep|usleep|osyield|morestack|newstack|sysmon|mstart|timer|exitsyscall)'):
        return 'Go scheduler, timers, wake-ups'
    return 'other: ' + frames[-1] if frames else 'other'

tot = defaultdict(float)
total = 0.0
excluded = 0.0
for v, frames in samples:
    a = area(frames)
    if a is None:
        excluded += v
        continue
    tot[a] += v
    total += v
sc = sum(v for v, fr in samples if area(fr) is not None and any_(fr[:6], r'^syscall\.|internal/runtime/syscall|runtime/internal/syscall'))
print(f'pipeline samples {total:.2f}s (harness excluded: {excluded:.2f}s); of them in syscalls {100*sc/total:.1f}%')
for a, v in sorted(tot.items(), key=lambda kv: -kv[1]):
    print(f'| {a} | {v:.2f} s | {100*v/total:.1f} % |')
