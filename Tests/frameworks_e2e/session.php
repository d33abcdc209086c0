<?php
// Sessions through PHP's own session API with phpredis's handler (the runner passes
// session.save_handler=redis, session.save_path and redis.session.locking_enabled=1 with -d).
//   php session.php create ID USER   start a session and store a user in it
//   php session.php read ID          print the session's user ("-" when it has none)
//   php session.php update ID USER   change the user (a write that a stale lock would block)
//   php session.php destroy ID       log out: session_destroy()
//   php session.php hold ID          start the session and keep its lock until stdin closes
// Exit status 1 when PHP reports the session could not be started or written.
[$script, $action, $id] = $argv + [null, null, null];
$user = $argv[3] ?? null;
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
session_id($id);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\n");
    exit(1);
}
switch ($action) {
    case 'create':
    case 'update':
        $_SESSION['user'] = $user;
        if (!session_write_close()) {
            fwrite(STDERR, "session_write_close failed\n");
            exit(1);
        }
        break;
    case 'read':
        echo ($_SESSION['user'] ?? '-'), "\n";
        break;
    case 'destroy':
        session_destroy();
        break;
    case 'hold':
        echo "locked\n";
        fgets(STDIN);
        break;
    default:
        fwrite(STDERR, "unknown action $action\n");
        exit(2);
}
