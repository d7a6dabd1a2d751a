package fileblob

import "golang.org/x/sys/unix"

// errNoAttr is the error of reading an extended attribute a file does not have.
const errNoAttr = unix.ENOATTR
