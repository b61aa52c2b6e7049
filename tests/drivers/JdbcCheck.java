// pgjdbc through pgsplit: server-side prepared statements after the first
// use (prepareThreshold=1), reads on replicas, batch inserts and a
// transaction on the primary, NULLs.
import java.sql.*;
import java.util.*;

public class JdbcCheck {
    static void check(boolean cond, String what) {
        if (!cond) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static long lsn(String text) {
        String[] parts = text.split("/");
        return (Long.parseLong(parts[0], 16) << 32) | Long.parseLong(parts[1], 16);
    }

    /** Waits until the proxy's monitor has seen every replica replay what
     *  the primary has written (its /status), so reads spread over both. */
    static void monitorCaughtUp(int primary) throws Exception {
        long target;
        String direct = "jdbc:postgresql://127.0.0.1:" + primary + "/app?user=app&password=app";
        try (Connection d = DriverManager.getConnection(direct); Statement s = d.createStatement();
             ResultSet rs = s.executeQuery("SELECT pg_current_wal_lsn()::text")) {
            rs.next();
            target = lsn(rs.getString(1));
        }
        java.util.regex.Pattern node = java.util.regex.Pattern.compile(
            "\"role\":\"replica\"[^}]*?\"replay_lsn\":\"([0-9A-F]+/[0-9A-F]+)\"");
        for (int i = 0; i < 1000; i++) {
            java.net.HttpURLConnection h = (java.net.HttpURLConnection)
                new java.net.URL("http://" + System.getenv("PGSPLIT_ADMIN") + "/status").openConnection();
            String status = new String(h.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
            java.util.regex.Matcher m = node.matcher(status);
            int seen = 0, behind = 0;
            while (m.find()) {
                seen++;
                if (lsn(m.group(1)) < target) behind++;
            }
            if (seen > 0 && behind == 0) return;
            Thread.sleep(10);
        }
        check(false, "the monitor never saw the replicas replay the CREATE");
    }

    /** Waits until the proxy's catalog facts place what sql names. */
    static void proxyKnows(String sql) throws Exception {
        String body = "{\"sql\": \"" + sql.replace("\"", "\\\"") + "\"}";
        for (int i = 0; i < 500; i++) {
            java.net.HttpURLConnection h = (java.net.HttpURLConnection)
                new java.net.URL("http://" + System.getenv("PGSPLIT_ADMIN") + "/explain").openConnection();
            h.setRequestMethod("POST");
            h.setDoOutput(true);
            h.getOutputStream().write(body.getBytes(java.nio.charset.StandardCharsets.UTF_8));
            String answer = new String(h.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
            if (!answer.contains("\"reason\":\"unknown\"")) return;
            Thread.sleep(10);
        }
        check(false, "the proxy never learned what " + sql + " names");
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv("PGSPLIT_PORT"));
        int primary = Integer.parseInt(System.getenv("PRIMARY_PORT"));
        Set<Integer> replicas = new HashSet<>();
        for (String p : System.getenv("REPLICA_PORTS").split(",")) replicas.add(Integer.parseInt(p));
        String url = "jdbc:postgresql://127.0.0.1:" + port + "/app?prepareThreshold=1&user=app&password=app";
        try (Connection c = DriverManager.getConnection(url)) {
            c.setAutoCommit(true);
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE IF NOT EXISTS drv_jdbc (id serial PRIMARY KEY, n int, t text)");
            }
            // read-your-writes keeps this session's reads off a replica
            // until it has replayed the CREATE; they spread over both once
            // the monitor saw both.
            monitorCaughtUp(primary);
            Set<Integer> seen = new HashSet<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT inet_server_port(), ?::int * 2")) {
                for (int i = 0; i < 20; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(replicas.contains(rs.getInt(1)), "read on a replica, got " + rs.getInt(1));
                        check(rs.getInt(2) == i * 2, "read result");
                        seen.add(rs.getInt(1));
                    }
                }
            }
            check(seen.size() == 2 || "session".equals(System.getenv("POOL_MODE")), "both replicas: " + seen);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO drv_jdbc (n, t) VALUES (?, ?)")) {
                for (int i = 0; i < 50; i++) {
                    ps.setInt(1, i);
                    if (i % 2 == 0) ps.setNull(2, Types.VARCHAR); else ps.setString(2, "t" + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 50, "batch counts");
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::int, ?::text, ?::bool, ?::text IS NULL, ?::float8")) {
                ps.setInt(1, 4); ps.setString(2, "x"); ps.setBoolean(3, true); ps.setNull(4, Types.VARCHAR); ps.setDouble(5, 2.5);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == 4 && rs.getString(2).equals("x") && rs.getBoolean(3) && rs.getBoolean(4) && rs.getDouble(5) == 2.5, "types");
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                try (ResultSet rs = s.executeQuery("SELECT inet_server_port()")) {
                    rs.next();
                    check(rs.getInt(1) == primary, "read in a transaction on the primary");
                }
                s.executeUpdate("INSERT INTO drv_jdbc (n) VALUES (77)");
            }
            c.commit();
            c.setAutoCommit(true);
            // Once the replicas have replayed this session's writes, its
            // reads (read-your-writes on, prepareThreshold=1) run on them.
            String sql = "SELECT count(*) FROM drv_jdbc WHERE n = 77";
            for (int p : replicas) {
                String direct = "jdbc:postgresql://127.0.0.1:" + p + "/app?user=app&password=app";
                try (Connection d = DriverManager.getConnection(direct); Statement s = d.createStatement()) {
                    boolean done = false;
                    for (int i = 0; i < 1000 && !done; i++) {
                        try (ResultSet rs = s.executeQuery(sql)) {
                            rs.next();
                            done = rs.getLong(1) >= 1;
                        }
                        if (!done) Thread.sleep(10);
                    }
                    check(done, "replica " + p + " never replayed the writes");
                }
            }
            proxyKnows(sql);
            try (PreparedStatement ps = c.prepareStatement("SELECT inet_server_port(), count(*) FROM drv_jdbc WHERE n = ?")) {
                for (int i = 0; i < 10; i++) {
                    ps.setInt(1, 77);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check(replicas.contains(rs.getInt(1)), "read after the writes replayed on a replica, got " + rs.getInt(1));
                        check(rs.getLong(2) >= 1, "the replica has the session's write");
                    }
                }
            }
        }
        System.out.println("pgjdbc ok");
    }
}
