// Package lifecycle holds the system test of cancel and delete: tasks in every state of the split
// deployment, each cancelled or deleted through the master or the frontend's JSON API, and everything
// else checked untouched. It has tests only.
package lifecycle
