// pgjdbc logs in through pgsplit as the user and password given (a user
// that may exist only in the database: auth.query), runs a server-side
// prepared statement, and prints current_user.
import java.sql.*;

public class LoginCheck {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/app?prepareThreshold=1";
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            String who = null;
            for (int i = 0; i < 3; i++) {
                try (PreparedStatement p = c.prepareStatement("SELECT current_user, ?::int");
                ) {
                    p.setInt(1, i);
                    try (ResultSet rs = p.executeQuery()) {
                        rs.next();
                        who = rs.getString(1);
                    }
                }
            }
            System.out.println(who);
        }
    }
}
