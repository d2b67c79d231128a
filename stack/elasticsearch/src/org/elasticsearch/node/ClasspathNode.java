package org.elasticsearch.node;

import org.elasticsearch.env.Environment;
import org.elasticsearch.plugins.ClasspathPluginsService;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.PluginsLoader;
import org.elasticsearch.plugins.PluginsService;

import java.util.List;

/**
 * A node whose plugins come from the classpath. The node construction hooks it needs
 * ({@link NodeConstruction} and {@link NodeServiceProvider}) are package-private, hence the package.
 * It deliberately avoids the test framework's mock node, which requires the randomized test
 * bootstrap (jar-hell check, security manager, entitlements).
 */
public final class ClasspathNode extends Node {

    public ClasspathNode(Environment environment, List<Class<? extends Plugin>> pluginClasses) {
        super(NodeConstruction.prepareConstruction(
            environment,
            ClasspathPluginsService.emptyLoader(),
            new ClasspathServiceProvider(pluginClasses),
            // forbidPrivateIndexSettings: the default of a production node
            true
        ));
    }

    private static final class ClasspathServiceProvider extends NodeServiceProvider {
        private final List<Class<? extends Plugin>> pluginClasses;

        ClasspathServiceProvider(List<Class<? extends Plugin>> pluginClasses) {
            this.pluginClasses = List.copyOf(pluginClasses);
        }

        @Override
        PluginsService newPluginService(Environment environment, PluginsLoader pluginsLoader) {
            return new ClasspathPluginsService(environment.settings(), environment.configDir(), pluginClasses);
        }
    }
}
