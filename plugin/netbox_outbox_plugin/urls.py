"""The plugin's URLs, under /plugins/netbox-outbox/ (the tabs are registered per model in
``__init__.py``)."""

from django.urls import path

from . import views

urlpatterns = [
    path('deliveries/', views.DeliveryListView.as_view(), name='delivery_list'),
    path('deliveries/replay/', views.DeliveryReplayView.as_view(), name='delivery_replay'),
    path('deliveries/<int:pk>/', views.DeliveryView.as_view(), name='delivery'),
    path('deliveries/<int:pk>/skip/', views.DeliverySkipView.as_view(), name='delivery_skip'),
    path('webhooks/<int:pk>/pause/', views.WebhookPauseView.as_view(), name='webhook_pause'),
    path('webhooks/<int:pk>/resume/', views.WebhookResumeView.as_view(), name='webhook_resume'),
]
