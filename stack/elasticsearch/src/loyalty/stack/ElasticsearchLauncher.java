package loyalty.stack;

import org.elasticsearch.Build;
import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.ClasspathNode;
import org.elasticsearch.node.InternalSettingsPreparer;
import org.elasticsearch.node.Node;
import org.elasticsearch.transport.netty4.Netty4Plugin;

import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Runs one Elasticsearch node inside this JVM for the local stack.
 *
 * <p>Usage: {@code java -cp <classpath> loyalty.stack.ElasticsearchLauncher key=value...}, where
 * every argument is a node setting ({@code path.home}, {@code http.port}, ...). The stack manager
 * passes all of them, so no {@code elasticsearch.yml} is read. Logs go to standard output, which the
 * stack manager redirects to its log file. SIGTERM closes the node cleanly.
 */
public final class ElasticsearchLauncher {
    private static final long CLOSE_TIMEOUT_SECONDS = 30;

    private ElasticsearchLauncher() {}

    public static void main(String[] args) throws Exception {
        Settings settings = parseSettings(args);
        String nodeName = settings.get("node.name", "loyalty-stack");

        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(nodeName);
        LogConfigurator.configureWithoutConfig(settings);

        Node node;
        try {
            Environment environment =
                InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), null, () -> nodeName);
            node = new ClasspathNode(environment, List.of(Netty4Plugin.class, RootInfoPlugin.class));
        } catch (Throwable e) {
            fail(e);
            return;
        }

        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(CLOSE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "stack-node-shutdown"));

        try {
            node.start();
        } catch (Throwable e) {
            fail(e);
        }
        System.out.println("stack: elasticsearch node started, version " + Build.current().version());
        // Elasticsearch's own threads are daemons, so the JVM would exit as soon as main returns.
        closed.await();
    }

    /** Report and exit for real: a half-built node still holds threads and the data folder lock. */
    private static void fail(Throwable e) {
        System.out.println("ERROR: elasticsearch node failed to start: " + e);
        e.printStackTrace(System.out);
        System.exit(1);
    }

    private static Settings parseSettings(String[] args) {
        // Without a log4j2.properties the root level stays at ERROR: make startup visible in the log.
        Settings.Builder builder = Settings.builder().put("logger.level", "INFO");
        for (String arg : args) {
            int eq = arg.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected key=value, got: " + arg);
            }
            builder.put(arg.substring(0, eq), arg.substring(eq + 1));
        }
        return builder.build();
    }
}
