import { FSWatcher, statSync, watch } from 'node:fs';
import path from 'node:path';

// Watches a directory that may not exist yet (a CNI DaemonSet creates /etc/cni/net.d on a fresh node): while it is
// missing, the nearest existing ancestor is watched and the watch moves down when the directory appears. inotify
// underneath; no polling.

export class DirWatcher {
  private watcher: FSWatcher | undefined;
  private watching = '';
  private closed = false;

  constructor(
    private readonly dir: string,
    private readonly onChange: () => void,
  ) {
    this.arm();
  }

  private arm(): void {
    if (this.closed) return;
    let target = this.dir;
    for (;;) {
      try {
        const w = watch(target, { persistent: false }, () => this.event());
        w.on('error', () => this.rearm());
        this.watcher?.close();
        this.watcher = w;
        this.watching = target;
        return;
      } catch {
        const parent = path.dirname(target);
        if (parent === target) return;
        target = parent;
      }
    }
  }

  private rearm(): void {
    this.watcher?.close();
    this.watcher = undefined;
    this.watching = '';
    this.arm();
  }

  private event(): void {
    if (this.closed) return;
    // The directory appeared (we watched an ancestor) or went away (the watch is dead): move the watch.
    if (this.watching !== this.dir) this.rearm();
    else {
      try {
        watchable(this.dir);
      } catch {
        this.rearm();
      }
    }
    this.onChange();
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
  }
}

/** Throws when the directory is gone. */
function watchable(dir: string): void {
  if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a directory`);
}
